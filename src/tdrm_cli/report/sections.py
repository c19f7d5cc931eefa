"""The sections of report.md: the policy, its samples' process-outcome coupling, PRM step
quality, Best-of-N, search, search against sampling at the same budget, RL curves, and
PRM quality against its data's generation cost."""

from __future__ import annotations

from pathlib import Path

from tdrm_cli.plots import rl_accuracy_vs_problems
from tdrm_cli.report.markdown import copy_plots, fmt, md_table, read_json, reading


def policy_section(policy: str, p: dict) -> str:
    """Greedy pass@1, maj@k, pass@k and sample accuracy of the policy (`metrics.policy`)."""
    return f"## Policy `{policy}`\n\n{p['problems']} problems.\n\n" + md_table(
        ["greedy pass@1", f"maj@{p['k']}", f"pass@{p['k']}", "sample accuracy"],
        [[p["pass@1"], p[f"maj@{p['k']}"], p[f"pass@{p['k']}"], p["sample_accuracy"]]],
    )


QUALITY_KEYS = (
    "step_auroc",
    "outcome_auroc",
    "first_error_f1",
    "first_error_error_acc",
    "first_error_correct_acc",
    "ece_last_step",
    "smoothness",
    "smoothness_per_token",
)


def prm_quality_section(title: str, quality: dict) -> str:
    """Step quality of every PRM (`metrics.prm` or `metrics.steps_file`), degenerate ones noted."""
    rows = [
        [name, *[values.get(k) for k in QUALITY_KEYS], _yes_no(values.get("degenerate"))]
        for name, values in quality.items()
    ]
    return (
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
            ],
            [row[:6] for row in rows],
        )
        + "\n\n"
        + md_table(
            ["PRM", "ECE", "smoothness", "smoothness/token", "degenerate"],
            [[row[0], *row[6:]] for row in rows],
        )
        + degenerate_notes(quality)
    )


def processbench_section(source: str, quality: dict) -> str:
    """Every PRM side by side under the official ProcessBench protocol, one column per
    subset (`metrics.steps_file.<prm>.processbench`, `metrics.processbench_official`)."""
    first = next(iter(quality.values()))["processbench"]
    subsets = first["subsets"]  # one file: the same subsets for every PRM

    def cell(bench: dict) -> str:
        return " / ".join(fmt(bench[k]) for k in ("error_acc", "correct_acc", "f1"))

    rows = [
        [
            name,
            *[cell(values["processbench"]["subsets"][s]) for s in subsets],
            values["processbench"]["average_f1"],
        ]
        for name, values in quality.items()
    ]
    sizes = ", ".join(
        f"{s} {b['solutions']} ({b['erroneous']} erroneous)" for s, b in subsets.items()
    )
    return (
        f"## ProcessBench on `{source}`: the official protocol\n\n"
        f"Fixed threshold {first['threshold']:g} (`--threshold`; 0.5 is the published "
        "default), every solution scored: the predicted first error is the first step "
        "scoring below it (none: the solution is called correct). Per subset: accuracy on "
        "the erroneous solutions (predicted step = labelled step), accuracy on the correct "
        "ones (none predicted), and their harmonic mean F1; **average F1** = the unweighted "
        "mean of the subsets' F1, the number the paper reports. This is the official "
        "number; the tuned-threshold F1 in the next table is not. Solutions: "
        f"{sizes}.\n\n"
        + md_table(["PRM", *[f"{s} (err / correct / F1)" for s in subsets], "average F1"], rows)
    )


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


def bon_section(run_dir: Path, out: Path, plots: dict[Path, str]) -> str:
    """Accuracy at every N for pass@N, majority and every PRM curve of one bon run."""
    results = read_json(run_dir, "results.json")
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
    return text + copy_plots(run_dir, out, "best-of-N accuracy vs N", plots)


def paired_table(paired: list[dict]) -> str:
    """PRM-weighted minus majority at the largest N, with its paired bootstrap interval."""
    if not paired:
        return ""
    rows = [
        [
            p["name"],
            f"{p['minus_majority']:+.3f}",
            f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
            reading(*p["ci95"], "PRM better", "majority better"),
        ]
        for p in paired
    ]
    return (
        f"\nPRM-weighted vote minus majority at N={paired[0]['n']} (same candidates; 95% paired "
        "bootstrap interval over problems):\n\n"
        + md_table(["curve", "minus majority", "95% CI", "reading"], rows)
        + "\n"
    )


def search_section(run_dir: Path, out: Path, plots: dict[Path, str]) -> str:
    """Accuracy, oracle and generated tokens of every method x PRM of one search run."""
    results = read_json(run_dir, "results.json")
    rows = [
        [r["method"], r["prm"], r["accuracy"], r.get("oracle"), r["tokens_per_problem"]]
        for r in results["rows"]
    ]
    text = (
        f"### Step-level search: `{run_dir}`\n\n"
        + md_table(["method", "PRM", "accuracy", "oracle", "generated tokens / problem"], rows)
        + "\n"
    )
    return text + copy_plots(run_dir, out, "search accuracy vs tokens", plots)


def matched_budget_section(search_dirs: list[str], bon_dirs: list[str], policy: dict | None) -> str:
    """Search against sampling at the same generated-token budget: for every search row,
    majority and the same PRM's weighted vote at the largest N whose samples (N x the mean
    tokens of a `bon` candidate) cost no more than the search did; and the policy's greedy
    decoding alone."""
    import pyarrow.parquet as pq

    bon_dir = next((Path(b) for b in bon_dirs if (Path(b) / "scores.parquet").is_file()), None)
    if bon_dir is None or not search_dirs:
        return ""
    bon = read_json(bon_dir, "results.json")
    tokens = pq.read_table(bon_dir / "scores.parquet", columns=["num_tokens"])["num_tokens"]
    counted = [t for t in tokens.to_pylist() if t is not None]
    if not counted:
        return ""
    per_sample = sum(counted) / len(counted)
    accuracy = {(r["name"], r["n"]): r["accuracy"] for r in bon["rows"]}
    rows = []
    for search_dir in search_dirs:
        for r in read_json(Path(search_dir), "results.json")["rows"]:
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


RL_CURVES = "rl_curves.png"


def rl_section(run_dirs: list[str], out: Path) -> str:
    curves, rows = {}, []
    for run_dir in run_dirs:
        manifest_metrics = read_json(run_dir, "manifest.json").get("metrics", {})
        points = read_json(run_dir, "eval_curve.json")["points"]
        label = f"{Path(run_dir).name} ({manifest_metrics.get('reward', '?')})"
        advantage = manifest_metrics.get("advantage", "outcome")
        if advantage != "outcome":  # runs differing only in --advantage stay apart
            label = f"{label[:-1]}, {advantage} advantage)"
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
    rl_accuracy_vs_problems(curves, out / RL_CURVES, "held-out pass@1 vs training problems seen")
    return (
        f"### RL: accuracy vs problems seen\n\nTarget for the last column: the final accuracy of "
        f"`{reference[0]}` ({target:.3f}).\n\n"
        + md_table(
            ["run", "pass@1 start", "pass@1 end", "problems seen", "problems to reach target"],
            table,
        )
        + f"\n\n![RL accuracy vs problems seen]({RL_CURVES})\n"
    )


def prm_cost_section(cfg, quality: dict) -> str:
    """Every PRM that is a train-prm run: its target, the problems and generated tokens its
    data cost, and its quality here (step / outcome AUROC, Best-of-N at N=16): the data-
    efficiency curve and the equal-generation-cost comparison in one table."""
    import yaml

    at_16: dict[str, float] = {}
    for run_dir in cfg.bon:  # the last bon run holding a curve gives its value
        rows_ = read_json(Path(run_dir), "results.json")["rows"]
        at_16.update({r["name"]: r["accuracy"] for r in rows_ if r["n"] == 16})
    from tdrm_cli.stages.eval import prm_names

    rows = []
    names = prm_names(list(cfg.prm))
    for path in cfg.prm:
        name = names[path]
        manifest_path = Path(path) / "manifest.json"
        if name not in quality or not manifest_path.is_file():
            continue
        manifest = read_json(Path(path), "manifest.json")
        if manifest.get("stage") != "train-prm":
            continue
        config = yaml.safe_load((Path(path) / "config.yaml").read_text(encoding="utf-8")) or {}
        data = Path(str((manifest.get("inputs") or {}).get("data", {}).get("path", "")))
        collect = read_json(data, "manifest.json").get("metrics", {}) if data.is_dir() else {}
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
