"""report.md of `tdrm eval`: its sections in order, written next to the copied plots and
printed to the terminal."""

from __future__ import annotations

from pathlib import Path

from tdrm_cli.console import console
from tdrm_cli.plots import value_trajectories
from tdrm_cli.report.directions import paper_directions
from tdrm_cli.report.sections import (
    bon_section,
    coupling_section,
    matched_budget_section,
    policy_section,
    prm_cost_section,
    prm_quality_section,
    rl_section,
    search_section,
)
from tdrm_cli.runs import atomic_write_text


def write_report(out: Path, results: dict, trajectories: dict, cfg) -> Path:
    """report.md: policy, PRM quality, then every bon / search / rl run given; printed to the terminal too."""
    from rich.markdown import Markdown

    parts = [
        f"# tdrm report\n\nTask `{results['task']}`, split `{results['split']}`, seed {results['seed']}."
    ]
    if results.get("policy"):
        parts.append(policy_section(cfg.policy, results["policy"]))
    if results.get("coupling"):
        parts.append(coupling_section(results["coupling"]))
    for section, title in (
        ("prm", "PRM step quality on the policy's samples"),
        ("steps_file", f"PRM step quality on `{cfg.steps_file}`"),
    ):
        if results.get(section):
            parts.append(prm_quality_section(title, results[section]))
    if trajectories:
        value_trajectories(trajectories, out / "value_trajectories.png")
        parts.append("![value trajectories](value_trajectories.png)")
    if cfg.bon or cfg.search or cfg.rl:
        parts.append("## Inference-time search and RL")
    parts += [bon_section(Path(p), out) for p in cfg.bon]
    parts += [search_section(Path(p), out) for p in cfg.search]
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
    console.print(Markdown(text))
    return out / "report.md"
