"""Terminal tables (rich); later stages add plots and report.md here."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.table import Table

from tdrm_cli.console import console
from tdrm_cli.runs import list_runs, versions, writer_alive

KEY_METRICS = ("pass@1", "step_auroc", "accuracy", "pass@n", "train_loss")


def key_metric(metrics: dict) -> str:
    for key in KEY_METRICS:
        if isinstance(metrics.get(key), int | float):
            return f"{key}={metrics[key]:.3g}"
    for key, value in metrics.items():
        if isinstance(value, int | float):
            return f"{key}={value:.3g}"
    return ""


def runs_table(root: Path) -> None:
    table = Table(title=f"runs in {root}")
    for column in ("name", "stage", "status", "created", "key metric", "parent"):
        table.add_column(column)
    colors = {"complete": "green", "running": "yellow", "failed": "red", "interrupted": "red"}
    for path, manifest in list_runs(root):
        inputs = manifest.get("inputs") or {}
        parent = ", ".join(
            Path(v["path"]).name for v in inputs.values() if isinstance(v, dict) and v.get("path")
        )
        status = manifest.get("status", "?")
        if status == "running" and writer_alive(path) is False:
            status = "interrupted"  # its process died: continue it with --resume
        table.add_row(
            str(path.relative_to(root)),
            str(manifest.get("stage")),
            f"[{colors.get(status, 'white')}]{status}[/]",
            str(manifest.get("created", ""))[:19],
            key_metric(manifest.get("metrics") or {}),
            parent,
        )
    console.print(table)


def env_table() -> None:
    import torch

    table = Table(title="tdrm environment", show_header=False)
    for name, version in versions().items():
        table.add_row(name, str(version))
    table.add_row("python", platform.python_version())
    table.add_row("platform", platform.platform())
    device = (
        f"cuda ({torch.cuda.get_device_name(0)}) x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "cpu"
    )
    table.add_row("device", device)
    table.add_row("torch threads", str(torch.get_num_threads()))
    table.add_row("cpu count", str(os.cpu_count()))
    console.print(table)


# ---------------------------------------------------------------- report.md (tdrm eval)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(path: Path, name: str) -> dict:
    import json

    return json.loads((Path(path) / name).read_text(encoding="utf-8"))


def copy_plots(run_dir: Path, out: Path, prefix: str, alt: str) -> str:
    """Copy a run's PNGs next to report.md (so it stands alone) and embed each."""
    import shutil

    text = ""
    for png in sorted(Path(run_dir).glob("*.png")):
        target = out / f"{prefix}-{Path(run_dir).name}-{png.name}"
        shutil.copyfile(png, target)
        text += f"\n![{alt}]({target.name})\n"
    return text


def bon_section(run_dir: Path, out: Path) -> str:
    """Accuracy at every N for pass@N, majority and every PRM curve of one bon run."""

    results = _load(run_dir, "results.json")
    ns = results["ns"]
    names = list(dict.fromkeys(r["name"] for r in results["rows"]))
    acc = {(r["name"], r["n"]): r for r in results["rows"]}
    rows = [
        [
            name,
            *[
                f"{acc[name, n]['accuracy']:.3f}"
                + (f" ± {acc[name, n]['std']:.3f}" if acc[name, n]["std"] else "")
                for n in ns
            ],
        ]
        for name in names
    ]
    text = (
        f"### Best-of-N: `{run_dir}`\n\n{results['problems']} problems, {results['candidates_per_problem']} "
        f"candidates each, mean ± std over {results['subsets']} random subsets for N < max; seed "
        f"{results['seed']}. PRMs: "
        + ", ".join(f"`{k}` = `{v}`" for k, v in results["prms"].items())
        + "\n\n"
        + md_table(["curve", *[f"N={n}" for n in ns]], rows)
        + "\n"
        + paired_table(results.get("vs_majority") or [])
    )
    return text + copy_plots(run_dir, out, "bon", "best-of-N accuracy vs N")


def paired_table(paired: list[dict]) -> str:
    """PRM-weighted minus majority at the largest N, with its paired bootstrap interval."""
    if not paired:
        return ""
    rows = [
        [
            p["name"],
            f"{p['minus_majority']:+.3f}",
            f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
            _reading(*p["ci95"], "PRM better", "majority better"),
        ]
        for p in paired
    ]
    return (
        f"\nPRM-weighted vote minus majority at N={paired[0]['n']} (same candidates; 95% paired "
        "bootstrap interval over problems):\n\n"
        + md_table(["curve", "minus majority", "95% CI", "reading"], rows)
        + "\n"
    )


def search_section(run_dir: Path, out: Path) -> str:

    results = _load(run_dir, "results.json")
    rows = [
        [r["method"], r["prm"], r["accuracy"], r.get("oracle"), r["tokens_per_problem"]]
        for r in results["rows"]
    ]
    text = (
        f"### Step-level search: `{run_dir}`\n\n"
        + md_table(["method", "PRM", "accuracy", "oracle", "generated tokens / problem"], rows)
        + "\n"
    )
    return text + copy_plots(run_dir, out, "search", "search accuracy vs tokens")


def matched_budget_section(search_dirs: list[str], bon_dirs: list[str], policy: dict | None) -> str:
    """Search against sampling at the same generated-token budget: for every search row,
    majority and the same PRM's weighted vote at the largest N whose samples (N x the mean
    tokens of a `bon` candidate) cost no more than the search did; and the policy's greedy
    decoding alone."""
    import pyarrow.parquet as pq

    bon_dir = next((Path(b) for b in bon_dirs if (Path(b) / "scores.parquet").is_file()), None)
    if bon_dir is None or not search_dirs:
        return ""
    bon = _load(bon_dir, "results.json")
    tokens = pq.read_table(bon_dir / "scores.parquet", columns=["num_tokens"])["num_tokens"]
    counted = [t for t in tokens.to_pylist() if t is not None]
    if not counted:
        return ""
    per_sample = sum(counted) / len(counted)
    accuracy = {(r["name"], r["n"]): r["accuracy"] for r in bon["rows"]}
    rows = []
    for search_dir in search_dirs:
        for r in _load(Path(search_dir), "results.json")["rows"]:
            affordable = [n for n in bon["ns"] if n * per_sample <= r["tokens_per_problem"]]
            n = max(affordable, default=None)
            weighted = next(
                (v for (name, m), v in accuracy.items()
                 if m == n and name.startswith(f"{r['prm']}/") and name.endswith("/weighted")),
                None,
            )  # fmt: skip
            rows.append([
                r["method"], r["prm"], r["accuracy"], r["tokens_per_problem"], n,
                accuracy.get(("majority", n)), weighted,
            ])  # fmt: skip
    greedy = (policy or {}).get("pass@1")
    alone = (
        f"The policy's greedy decoding alone: pass@1 {greedy:.3f}, about {per_sample:.0f} "
        "tokens per problem.\n"
        if greedy is not None
        else ""
    )
    return (
        "### Search against sampling at the same token budget\n\n"
        f"Best-of-N from `{bon_dir}` at the largest N whose candidates (mean "
        f"{per_sample:.1f} generated tokens each) cost no more than the search did per "
        "problem (a blank N: not even one candidate fits). Each on its own problems (the "
        "first ones of the same split), so the two columns are not paired.\n\n"
        + md_table(
            [
                "method",
                "PRM",
                "search accuracy",
                "search tokens / problem",
                "N",
                "majority@N",
                "PRM-weighted@N",
            ],
            rows,
        )
        + "\n\n"
        + alone
    )


def problems_to_reach(points: list[dict], target: float) -> int | None:
    """Training problems seen when held-out accuracy first reaches `target` (None: never)."""
    return next(
        (
            p["problems_seen"]
            for p in sorted(points, key=lambda p: p["problems_seen"])
            if p["accuracy"] >= target
        ),
        None,
    )


def rl_section(run_dirs: list[str], out: Path) -> str:
    from tdrm_cli.plots import rl_accuracy_vs_problems

    curves, rows = {}, []
    for run_dir in run_dirs:
        manifest_metrics = _load(run_dir, "manifest.json").get("metrics", {})
        points = _load(run_dir, "eval_curve.json")["points"]
        label = f"{Path(run_dir).name} ({manifest_metrics.get('reward', '?')})"
        curves[label] = points
        rows.append(
            [
                label,
                points[0]["accuracy"],
                points[-1]["accuracy"],
                points[-1]["problems_seen"],
                points,
            ]
        )
    reference = next((r for r in rows if r[0].endswith("(rlvr)")), rows[0])
    target = reference[2]
    table = [
        [label, start, end, seen, problems_to_reach(points, target)]
        for label, start, end, seen, points in rows
    ]
    rl_accuracy_vs_problems(curves, out / "rl_curves.png", "held-out pass@1 vs training problems seen")
    return (
        f"### RL: accuracy vs problems seen\n\nTarget for the last column: the final accuracy of "
        f"`{reference[0]}` ({target:.3f}).\n\n"
        + md_table(
            ["run", "pass@1 start", "pass@1 end", "problems seen", "problems to reach target"],
            table,
        )
        + "\n\n![RL accuracy vs problems seen](rl_curves.png)\n"
    )


def plot_trajectories(trajectories: dict, path: Path, limit: int = 25) -> Path:
    """V(s_t) along correct and wrong solutions, one panel per PRM, with per-step means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(trajectories), figsize=(5.5 * len(trajectories), 4), squeeze=False, sharey=True
    )
    for ax, (name, (values, correct)) in zip(axes[0], trajectories.items(), strict=True):
        for label, color, want in (("correct", "tab:green", 1), ("wrong", "tab:red", 0)):
            group = [v for v, c in zip(values, correct, strict=True) if c == want]
            for v in group[:limit]:
                ax.plot(range(1, len(v) + 1), v, color=color, alpha=0.15, linewidth=0.8)
            depth = max((len(v) for v in group), default=0)
            means = [
                sum(v[t] for v in group if len(v) > t) / max(sum(len(v) > t for v in group), 1)
                for t in range(depth)
            ]
            if means:
                ax.plot(
                    range(1, depth + 1),
                    means,
                    color=color,
                    linewidth=2.5,
                    label=f"{label} solutions (mean)",
                )
        ax.set(title=f"PRM {name}", xlabel="step t", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("V(s_t)")
    fig.suptitle("value trajectories along sampled solutions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _yes_no(flag) -> str | None:
    return None if flag is None else "**yes**" if flag else "no"


def coupling_section(coupling: dict) -> str:
    """Process–outcome coupling of the policy's samples (`metrics.coupling`)."""
    value = coupling["coupling"]
    share = (
        "No sample is correct."
        if value is None
        else f"{coupling['coupled_correct']} of {coupling['correct_samples']} correct samples "
        f"({value:.1%}) have every step right."
    )
    rows = [
        [k if k == "none" else f"step {k}", coupling["samples_by_first_error"][k], p]
        for k, p in coupling["p_correct_by_first_error"].items()
    ]
    return (
        f"## Process–outcome coupling\n\nOn the policy's samples, against exact step truth: "
        f"{share} A PRM can learn step verification only from rollouts whose verdict follows "
        "from their steps (coupling near 1; low coupling means right answers come from "
        "wrong steps).\n\n"
        + md_table(["first wrong step (0-based)", "samples", "P(correct)"], rows)
    )


def degenerate_notes(section: dict) -> str:
    """A footnote per degenerate PRM with the rule's reasons (`metrics.degeneracy`)."""
    rule = (
        "\n\nDegenerate (the rule train-prm applies to its held-out rollouts): step values "
        "with std < 0.01, or step or outcome AUROC within 2 null standard errors "
        "(Hanley–McNeil at 0.5) of 0.5."
    )
    notes = []
    for name, values in section.items():
        if values.get("degenerate"):
            notes.append(
                f"- `{name}` learned nothing beyond the base rate on these samples: "
                + "; ".join(values.get("degenerate_reasons") or [])
                + "."
            )
        if values.get("train_prm_degenerate"):
            notes.append(
                f"- `{name}` was flagged degenerate by train-prm on its held-out rollouts."
            )
    return rule + ("\n\n" + "\n".join(notes) if notes else "")


def write_report(out: Path, results: dict, trajectories: dict, cfg) -> Path:
    """report.md: policy, PRM quality, then every bon / search / rl run given; printed to the terminal too."""
    from rich.markdown import Markdown

    parts = [
        f"# tdrm report\n\nTask `{results['task']}`, split `{results['split']}`, seed {results['seed']}."
    ]
    if results.get("policy"):
        p = results["policy"]
        parts.append(
            f"## Policy `{cfg.policy}`\n\n{p['problems']} problems.\n\n"
            + md_table(
                ["greedy pass@1", f"maj@{p['k']}", f"pass@{p['k']}", "sample accuracy"],
                [[p["pass@1"], p[f"maj@{p['k']}"], p[f"pass@{p['k']}"], p["sample_accuracy"]]],
            )
        )
    if results.get("coupling"):
        parts.append(coupling_section(results["coupling"]))
    keys = [
        "step_auroc",
        "outcome_auroc",
        "first_error_f1",
        "first_error_error_acc",
        "first_error_correct_acc",
        "ece_last_step",
        "smoothness",
        "smoothness_per_token",
    ]
    for section, title in (
        ("prm", "PRM step quality on the policy's samples"),
        ("steps_file", f"PRM step quality on `{cfg.steps_file}`"),
    ):
        if results.get(section):
            rows = [
                [name, *[values.get(k) for k in keys], _yes_no(values.get("degenerate"))]
                for name, values in results[section].items()
            ]
            parts.append(
                f"## {title}\n\nStep AUROC against exact step truth; first-error identification "
                "(ProcessBench F1, threshold chosen on a held-out part); ECE of the last-step value; "
                "smoothness = mean |V(t+1) - V(t)| per step and per token (lower is smoother); "
                "degenerate = learned nothing beyond the base rate (see below).\n\n"
                + md_table(
                    [
                        "PRM",
                        "step AUROC",
                        "outcome AUROC",
                        "first-error F1",
                        "acc (erroneous)",
                        "acc (correct)",
                        "ECE",
                        "smoothness",
                        "smoothness/token",
                        "degenerate",
                    ],
                    rows,
                )
                + degenerate_notes(results[section])
            )
    if trajectories:
        plot_trajectories(trajectories, out / "value_trajectories.png")
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
    directions = paper_directions(cfg, results)
    if directions:
        parts.append(directions)
    text = "\n\n".join(parts) + "\n"
    from tdrm_cli.runs import atomic_write_text

    atomic_write_text(out / "report.md", text)
    console.print(Markdown(text))
    return out / "report.md"


def prm_cost_section(cfg, quality: dict) -> str:
    """Every PRM that is a train-prm run: its target, the problems and generated tokens its
    data cost, and its quality here (step / outcome AUROC, Best-of-N at N=16): the data-
    efficiency curve and the equal-generation-cost comparison in one table."""
    import yaml

    at_16: dict[str, float] = {}
    for run_dir in cfg.bon:  # the last bon run holding a curve gives its value
        rows_ = _load(Path(run_dir), "results.json")["rows"]
        at_16.update({r["name"]: r["accuracy"] for r in rows_ if r["n"] == 16})
    rows = []
    for path in cfg.prm:
        name = Path(path).name or path
        manifest_path = Path(path) / "manifest.json"
        if name not in quality or not manifest_path.is_file():
            continue
        manifest = _load(Path(path), "manifest.json")
        if manifest.get("stage") != "train-prm":
            continue
        config = yaml.safe_load((Path(path) / "config.yaml").read_text(encoding="utf-8")) or {}
        data = Path(str((manifest.get("inputs") or {}).get("data", {}).get("path", "")))
        collect = _load(data, "manifest.json").get("metrics", {}) if data.is_dir() else {}
        problems = manifest.get("metrics", {}).get("train_problems")
        tokens = collect.get("generated_tokens")
        share = problems / collect["problems"] if problems and collect.get("problems") else None
        rows.append(
            [
                name,
                config.get("loss"),
                problems,
                None if tokens is None or share is None else round(tokens * share),
                quality[name].get("step_auroc"),
                quality[name].get("outcome_auroc"),
                at_16.get(f"{name}/min/weighted"),
            ]
        )
    if not rows:
        return ""
    return (
        "## PRM quality against training data and generation cost\n\n"
        "Training problems and the tokens generated for them (the collect run's tokens, MC "
        "rollouts included, in proportion to the problems used); quality on this report's "
        "samples; Best-of-N = the min-aggregated weighted vote at N=16.\n\n"
        + md_table(
            [
                "PRM",
                "target",
                "train problems",
                "generated tokens",
                "step AUROC",
                "outcome AUROC",
                "Best-of-N@16",
            ],
            rows,
        )
    )


def _reading(low: float, high: float, better: str, worse: str) -> str:
    """The direction a 95% interval shows: `better` above zero, `worse` below, else noise."""
    return better if low > 0 else worse if high < 0 else "within noise"


def _unpaired(a: float, b: float, n_a: int, n_b: int) -> tuple[float, float, float]:
    """a - b and a normal 95% interval for two accuracies on separate samples."""
    se = (a * (1 - a) / max(n_a, 1) + b * (1 - b) / max(n_b, 1)) ** 0.5
    return a - b, a - b - 1.96 * se, a - b + 1.96 * se


def paper_directions(cfg, results: dict) -> str:
    """The paper's directions (TD-PRM vs MC-PRM at Best-of-N and search, PRM+RLVR vs RLVR),
    each stated as measured here: holds, does not hold, or within noise (95% intervals)."""
    from tdrm_cli.voting import paired_bootstrap

    rows: list[list] = []

    def add(claim: str, diff: float, low: float, high: float, how: str) -> None:
        verdict = _reading(low, high, "holds", "does not hold")
        rows.append([claim, f"{diff:+.3f}", f"[{low:+.3f}, {high:+.3f}]", how, verdict])

    td, mc = "prm-td", "prm-mc"
    for run_dir in cfg.bon:
        paired = {
            p["name"].split("/")[0]: p
            for p in _load(Path(run_dir), "results.json").get("vs_majority", [])
        }
        equal = "prm-td-nomc"
        if equal in paired and mc in paired and "hits" in paired[equal]:
            diff, low, high = paired_bootstrap(paired[equal]["hits"], paired[mc]["hits"])
            add(
                f"TD-PRM at MC's generation cost (no MC rollouts, more problems) beats MC-PRM "
                f"at Best-of-N (weighted, N={paired[equal]['n']})",
                diff,
                low,
                high,
                "paired bootstrap",
            )
        if td in paired and mc in paired and "hits" in paired[td]:
            diff, low, high = paired_bootstrap(paired[td]["hits"], paired[mc]["hits"])
            add(
                f"TD-PRM beats MC-PRM at Best-of-N (weighted, N={paired[td]['n']})",
                diff,
                low,
                high,
                "paired bootstrap",
            )
        for name in (td, mc):
            if name in paired:
                p = paired[name]
                add(
                    f"{name} weighted vote beats majority (N={p['n']})",
                    p["minus_majority"],
                    *p["ci95"],
                    "paired bootstrap",
                )
    for run_dir in cfg.search:
        rows_ = _load(Path(run_dir), "results.json")["rows"]
        n = _load(Path(run_dir), "manifest.json").get("metrics", {}).get("problems") or 0
        by = {(r["method"], r["prm"]): r["accuracy"] for r in rows_}
        for method in dict.fromkeys(r["method"] for r in rows_):
            if (method, td) in by and (method, mc) in by and n:
                add(
                    f"TD-PRM beats MC-PRM at {method} search",
                    *_unpaired(by[method, td], by[method, mc], n, n),
                    "normal approx.",
                )
    if cfg.rl:
        finals = {}
        for run_dir in cfg.rl:
            points = _load(Path(run_dir), "eval_curve.json")["points"]
            reward = _load(Path(run_dir), "manifest.json").get("metrics", {}).get("reward")
            finals[Path(run_dir).name] = (
                reward,
                points[-1]["accuracy"],
                _load(Path(run_dir), "manifest.json").get("metrics", {}).get("eval_problems") or 0,
            )
        base = next((v for v in finals.values() if v[0] == "rlvr"), None)
        for name, (reward, acc, n) in finals.items():
            if base is not None and reward == "prm+rlvr" and n:
                add(
                    f"{name} (PRM+RLVR) ends above RLVR",
                    *_unpaired(acc, base[1], n, base[2]),
                    "normal approx.",
                )
    if not rows:
        return ""
    return (
        "## The paper's directions, as measured here\n\n"
        "Each row: the difference, its 95% interval, and whether the direction holds, does not "
        "hold, or is within noise on this run.\n\n"
        + md_table(["direction", "difference", "95% CI", "interval", "reading"], rows)
    )


README_BEGIN = (
    "<!-- results:begin (generated by `make readme-results` from runs/demo/eval/report.md) -->"
)
README_END = "<!-- results:end -->"


def update_readme(report: Path, readme: Path) -> None:
    """Put the demo report's tables (not its images) between the README's result markers."""
    body = [
        line
        for line in report.read_text(encoding="utf-8").splitlines()
        if not line.startswith("![")
    ]
    body = [
        line.replace("# tdrm report", "### Demo report", 1)
        if line.startswith("# tdrm report")
        else line
        for line in body
    ]
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: result markers not found")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    section = "\n".join(
        line.replace("## ", "#### ", 1) if line.startswith("## ") else line for line in body
    )
    readme.write_text(
        f"{head}{README_BEGIN}\n{section.strip()}\n{README_END}{tail}", encoding="utf-8"
    )


def seed_numbers(root: Path) -> dict[str, float]:
    """The demo's headline numbers from one root (a `tdrm pipeline recipes/demo.yaml` run)."""
    root = Path(root)
    evaluated = json.loads((root / "eval" / "metrics.json").read_text(encoding="utf-8"))
    out = {
        "policy greedy pass@1": evaluated["policy"]["pass@1"],
        "coupling": evaluated["coupling"]["coupling"],
    }
    for name in ("prm-td", "prm-mc", "prm-truth", "prm-td-nomc", "policy-likelihood"):
        if name in evaluated.get("prm", {}):
            out[f"{name} step AUROC"] = evaluated["prm"][name]["step_auroc"]
            out[f"{name} outcome AUROC"] = evaluated["prm"][name]["outcome_auroc"]
    bon = json.loads((root / "bon" / "results.json").read_text(encoding="utf-8"))
    top = max(bon["ns"])
    at_top = {row["name"]: row["accuracy"] for row in bon["rows"] if row["n"] == top}
    for name, accuracy in at_top.items():
        if name == "majority" or name.endswith("/weighted"):
            out[f"Best-of-{top} {name}"] = accuracy
    for name, accuracy in at_top.items():
        if name.endswith("/weighted"):
            out[f"Best-of-{top} {name} minus majority"] = accuracy - at_top["majority"]
    search = json.loads((root / "search" / "results.json").read_text(encoding="utf-8"))
    for row in search["rows"]:
        out[f"{row['method']} search {row['prm']}"] = row["accuracy"]
    for name in ("rl-rlvr", "rl-td", "rl-mc"):
        points = json.loads((root / name / "eval_curve.json").read_text(encoding="utf-8"))["points"]
        out[f"{name} final accuracy"] = points[-1]["accuracy"]
    return out


def seeds_table(roots: list[Path]) -> str:
    """Mean ± std (population, over the roots given) of every headline number, as markdown."""
    runs = [seed_numbers(root) for root in roots]
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    rows = []
    for key in keys:
        given = [r[key] for r in runs]
        values = [v for v in given if v is not None]  # e.g. an AUROC with one class only
        if not values:
            rows.append([key, "n/a", ", ".join("n/a" for _ in given)])
            continue
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        per_seed = ", ".join("n/a" if v is None else f"{v:.3f}" for v in given)
        rows.append([key, f"{mean:.3f} ± {std:.3f}", per_seed])
    return (
        f"### The demo over {len(roots)} seeds\n\n"
        f"Seeds: {', '.join(str(r) for r in roots)}; mean ± std (each seed changes the policy, "
        "the data, the PRMs and every sample).\n\n"
        + md_table(["number", "mean ± std", "per seed"], rows)
    )
