"""report.md of `tdrm eval`: its sections in order, written next to the copied plots and
printed to the terminal."""

from __future__ import annotations

from pathlib import Path

from tdrm_cli.console import console, fitted
from tdrm_cli.plots import value_trajectories
from tdrm_cli.report.directions import paper_directions
from tdrm_cli.report.markdown import plot_names
from tdrm_cli.report.sections import (
    RL_CURVES,
    bon_section,
    coupling_section,
    matched_budget_section,
    policy_section,
    prm_cost_section,
    prm_quality_section,
    processbench_section,
    rl_section,
    search_section,
)
from tdrm_cli.runs import atomic_write_text

TRAJECTORIES = "value_trajectories.png"
OWN_PLOTS = {TRAJECTORIES, RL_CURVES}
"""The plots eval draws itself; a copied plot of a bon / search run takes another name."""


def write_report(out: Path, results: dict, trajectories: dict, cfg) -> Path:
    """report.md: policy, PRM quality, then every bon / search / rl run given; printed to the terminal too."""
    parts = [
        f"# tdrm report\n\nTask `{results['task']}`, split `{results['split']}`, seed {results['seed']}."
    ]
    if results.get("policy"):
        parts.append(policy_section(cfg.policy, results["policy"]))
    if results.get("coupling"):
        parts.append(coupling_section(results["coupling"]))
    if results.get("steps_file"):
        parts.append(processbench_section(cfg.steps_file, results["steps_file"]))
    for section, title in (
        ("prm", "PRM step quality on the policy's samples"),
        ("steps_file", f"PRM step quality on `{cfg.steps_file}` (tuned threshold)"),
    ):
        if results.get(section):
            parts.append(prm_quality_section(title, results[section]))
    if trajectories:
        value_trajectories(trajectories, out / TRAJECTORIES)
        parts.append(f"![value trajectories]({TRAJECTORIES})")
    if cfg.bon or cfg.search or cfg.rl:
        parts.append("## Inference-time search and RL")
    plots = plot_names([Path(p) for p in (*cfg.bon, *cfg.search)], OWN_PLOTS)
    parts += [bon_section(Path(p), out, plots) for p in cfg.bon]
    parts += [search_section(Path(p), out, plots) for p in cfg.search]
    budget = matched_budget_section(cfg.search, cfg.bon, results.get("policy"))
    if budget:
        parts.append(budget)
    if cfg.rl:
        parts.append(rl_section(cfg.rl, out))
    if results.get("prm"):
        cost = prm_cost_section(cfg, results["prm"])
        if cost:
            parts.append(cost)
    directions = paper_directions(cfg)
    if directions:
        parts.append(directions)
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(out / "report.md", text)
    console.print(terminal_markdown(text))
    return out / "report.md"


def terminal_markdown(text: str):
    """`text` as rich Markdown whose tables wrap and fold what does not fit the terminal
    instead of cutting it with '…'."""
    from rich.markdown import Markdown, TableElement

    class FoldingTable(TableElement):
        def __rich_console__(self, console, options):
            for table in super().__rich_console__(console, options):
                yield fitted(table, options.max_width)

    class TerminalMarkdown(Markdown):
        elements = {**Markdown.elements, "table_open": FoldingTable}

    return TerminalMarkdown(text)
