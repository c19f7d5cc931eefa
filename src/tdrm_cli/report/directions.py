"""The paper's directions (TD-PRM vs MC-PRM at Best-of-N and search, PRM+RLVR vs RLVR),
each read off the runs of one report with a 95% interval."""

from __future__ import annotations

from pathlib import Path

from tdrm_cli.report.markdown import md_table, read_json, reading

TD, MC, TD_NO_MC = "prm-td", "prm-mc", "prm-td-nomc"


def _row(claim: str, diff: float, low: float, high: float, how: str) -> list:
    verdict = reading(low, high, "holds", "does not hold")
    return [claim, f"{diff:+.3f}", f"[{low:+.3f}, {high:+.3f}]", how, verdict]


def _unpaired(a: float, b: float, n_a: int, n_b: int) -> tuple[float, float, float]:
    """a - b and a normal 95% interval for two accuracies on separate samples."""
    se = (a * (1 - a) / max(n_a, 1) + b * (1 - b) / max(n_b, 1)) ** 0.5
    return a - b, a - b - 1.96 * se, a - b + 1.96 * se


def bon_directions(run_dir: Path) -> list[list]:
    """TD-PRM (at MC's generation cost, and as trained) vs MC-PRM, and each PRM's weighted
    vote vs majority, all paired on one bon run's candidates."""
    from tdrm_cli.voting import paired_bootstrap

    rows = []
    paired = {
        p["name"].split("/")[0]: p
        for p in read_json(run_dir, "results.json").get("vs_majority", [])
    }
    if TD_NO_MC in paired and MC in paired and "hits" in paired[TD_NO_MC]:
        diff, low, high = paired_bootstrap(paired[TD_NO_MC]["hits"], paired[MC]["hits"])
        claim = (
            "TD-PRM at MC's generation cost (no MC rollouts, more problems) beats MC-PRM "
            f"at Best-of-N (weighted, N={paired[TD_NO_MC]['n']})"
        )
        rows.append(_row(claim, diff, low, high, "paired bootstrap"))
    if TD in paired and MC in paired and "hits" in paired[TD]:
        diff, low, high = paired_bootstrap(paired[TD]["hits"], paired[MC]["hits"])
        claim = f"TD-PRM beats MC-PRM at Best-of-N (weighted, N={paired[TD]['n']})"
        rows.append(_row(claim, diff, low, high, "paired bootstrap"))
    for name in (TD, MC):
        if name in paired:
            p = paired[name]
            claim = f"{name} weighted vote beats majority (N={p['n']})"
            rows.append(_row(claim, p["minus_majority"], *p["ci95"], "paired bootstrap"))
    return rows


def search_directions(run_dir: Path) -> list[list]:
    """TD-PRM vs MC-PRM for every method of one search run (same problems, unpaired)."""
    results = read_json(run_dir, "results.json")["rows"]
    n = read_json(run_dir, "manifest.json").get("metrics", {}).get("problems") or 0
    by = {(r["method"], r["prm"]): r["accuracy"] for r in results}
    return [
        _row(
            f"TD-PRM beats MC-PRM at {method} search",
            *_unpaired(by[method, TD], by[method, MC], n, n),
            "normal approx.",
        )
        for method in dict.fromkeys(r["method"] for r in results)
        if (method, TD) in by and (method, MC) in by and n
    ]


def rl_directions(run_dirs: list[str]) -> list[list]:
    """Every PRM+RLVR run's final held-out accuracy vs the RLVR run's."""
    finals = {}
    for run_dir in run_dirs:
        points = read_json(Path(run_dir), "eval_curve.json")["points"]
        metrics = read_json(Path(run_dir), "manifest.json").get("metrics", {})
        finals[Path(run_dir).name] = (
            metrics.get("reward"),
            points[-1]["accuracy"],
            metrics.get("eval_problems") or 0,
            metrics.get("advantage", "outcome"),
        )
    base = next((v for v in finals.values() if v[0] == "rlvr" and v[3] == "outcome"), None)
    return [
        _row(
            f"{name} (PRM+RLVR{'' if adv == 'outcome' else f', {adv} advantage'}) ends above RLVR",
            *_unpaired(acc, base[1], n, base[2]),
            "normal approx.",
        )
        for name, (reward, acc, n, adv) in finals.items()
        if base is not None and reward == "prm+rlvr" and n
    ]


def paper_directions(cfg) -> str:
    """The paper's directions, each stated as measured here: holds, does not hold, or within
    noise (95% intervals); empty when no run given tests one."""
    rows = [row for run_dir in cfg.bon for row in bon_directions(Path(run_dir))]
    rows += [row for run_dir in cfg.search for row in search_directions(Path(run_dir))]
    rows += rl_directions(cfg.rl)
    if not rows:
        return ""
    return (
        "## The paper's directions, as measured here\n\n"
        "Each row: the difference, its 95% interval, and whether the direction holds, does not "
        "hold, or is within noise on this run.\n\n"
        + md_table(["direction", "difference", "95% CI", "interval", "reading"], rows)
    )
