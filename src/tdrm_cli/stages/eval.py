"""`tdrm eval`: policy accuracy, PRM step quality, and one report of the whole chain.

Policy: greedy pass@1, and maj@k / pass@k over k temperature samples per problem.
Each PRM scores those samples; against exact `step_truth` it gets step AUROC,
ProcessBench first-error identification (threshold chosen on one part of the
problems, reported on the rest), ECE of the last-step value against the verdict,
and smoothness of the value trajectories (d = 1 and d = tokens of the next step), and
whether it is degenerate (`metrics.degeneracy`, the rule train-prm applies). The samples'
process–outcome coupling (`metrics.coupling`) says how far the verdict follows the steps.
`--steps-file` evaluates PRMs on external ProcessBench-format data instead: the official
protocol (fixed `--threshold`, per subset and their average F1) beside the tuned threshold.
`report.md` gathers these tables with the bon / search / rl runs given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tdrm_cli import metrics as M
from tdrm_cli.configs.sample import EvalConfig
from tdrm_cli.console import TokenRate, log, progress
from tdrm_cli.errors import UsageError, check_text
from tdrm_cli.prm import LIKELIHOOD_BASELINE
from tdrm_cli.runs import atomic_write_json, require_complete, resolve_model, run_stage
from tdrm_cli.tasks import load_task

RESULTS = "metrics.json"


# ---------------------------------------------------------------- policy


def bar_task(bar, description: str, sequences: int):
    """A new row of `bar` and the generation callback that moves it and counts tokens."""
    job = bar.add_task(description, total=sequences, tokens=0)
    generated = 0

    def on_batch(done: int, tokens: int) -> None:
        nonlocal generated
        generated += tokens
        bar.update(job, advance=done, tokens=generated)

    return on_batch


def sample_policy(cfg: EvalConfig, model_path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """k samples per problem (rows with steps, verdict, truth) and the policy metrics."""
    from tdrm_cli.generation import Sampling
    from tdrm_cli.solutions import load_policy
    from tdrm_cli.voting import majority

    task = load_task(cfg.task)
    problems = task.problems(cfg.split, cfg.problems)
    policy = load_policy(model_path, "hf", cfg.batch_size, cfg.trust_remote_code, cfg.allow_pickle)
    log(f"eval: greedy + {cfg.k} samples on {len(problems)} {cfg.split} problems")
    with progress(TokenRate()) as bar:
        greedy = policy.sample(
            task,
            problems,
            Sampling(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens),
            on_batch=bar_task(bar, "greedy", len(problems)),
        )
        sampled = policy.sample(
            task,
            problems,
            Sampling(
                n=cfg.k,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
            ),
            on_batch=bar_task(bar, f"{cfg.k} samples", len(problems) * cfg.k),
        )
    rows, greedy_hits, maj_hits, any_hits = [], 0, 0, 0
    for p_index, (g, group) in enumerate(zip(greedy, sampled, strict=True)):
        greedy_hits += g[0]["correct"]
        for row in group:
            row["p_index"] = p_index
        choice = majority([r["answer"] for r in group])
        maj_hits += int(choice is not None and group[choice]["correct"] == 1)
        any_hits += int(any(r["correct"] for r in group))
        rows.extend(group)
    n = len(problems)
    policy = {
        "problems": n,
        "k": cfg.k,
        "pass@1": greedy_hits / n,
        f"maj@{cfg.k}": maj_hits / n,
        f"pass@{cfg.k}": any_hits / n,
        "sample_accuracy": M.mean([r["correct"] for r in rows]),
    }
    return rows, policy


# ---------------------------------------------------------------- PRM quality


def first_wrong(truth: list[int]) -> int:
    return next((i for i, t in enumerate(truth) if t == 0), -1)


def prm_quality(
    prm: Any, rows: list[dict[str, Any]], fraction: float, batch_size: int
) -> tuple[dict, list[list[float]]]:
    """Step metrics of one PRM on graded solutions: `prompt`, `steps`, `step_truth` (and
    `correct` when known; `p_index` orders the problems for the threshold split)."""
    rows = [r for r in rows if r["steps"]]
    values = prm.score(
        [r["prompt"] for r in rows], [r["steps"] for r in rows], batch_size=batch_size
    )
    tokens = [prm.encode(r["prompt"], r["steps"]).step_tokens for r in rows]
    pairs = [
        (v, t)
        for r, vs in zip(rows, values, strict=True)
        if r["step_truth"] is not None
        for v, t in zip(vs, r["step_truth"], strict=False)
    ]
    out: dict[str, Any] = {
        "solutions": len(rows),
        "step_auroc": M.auroc([v for v, _ in pairs], [t for _, t in pairs]),
    }
    if all(r["step_truth"] is not None for r in rows) and rows:
        # Threshold on the first problems, scores on the rest: no peeking at the reported part.
        cut = max(r["p_index"] for r in rows) * fraction
        fit = [i for i, r in enumerate(rows) if r["p_index"] <= cut]
        rest = [i for i, r in enumerate(rows) if r["p_index"] > cut] or fit
        gold = [first_wrong(r["step_truth"]) for r in rows]
        threshold = M.best_threshold([values[i] for i in fit], [gold[i] for i in fit])
        bench = M.processbench(
            [M.first_error(values[i], threshold) for i in rest], [gold[i] for i in rest]
        )
        out.update(
            first_error_threshold=threshold, **{f"first_error_{k}": v for k, v in bench.items()}
        )
    outcome = None
    if all("correct" in r for r in rows):
        outcome = ([v[-1] for v in values], [r["correct"] for r in rows])
        out["ece_last_step"] = M.ece(*outcome)
        out["outcome_auroc"] = M.auroc(*outcome)
    out["smoothness"] = M.smoothness(values)
    out["smoothness_per_token"] = M.smoothness(values, tokens)
    step = ([v for v, _ in pairs], [t for _, t in pairs]) if pairs else None
    out.update(M.degeneracy(values, step=step, outcome=outcome))
    return out, values


def train_prm_flag(path: str) -> bool | None:
    """`degenerate` from a train-prm run folder's held-out metrics, None when not recorded."""
    metrics = Path(path) / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        flag = json.loads(metrics.read_text(encoding="utf-8")).get("degenerate")
    except (ValueError, AttributeError):
        return None
    return flag if isinstance(flag, bool) else None


def row_subset(item: dict[str, Any], where: str, default: str) -> str:
    """A row's ProcessBench subset: its `subset` or `split` field, else the prefix of an `id`
    like the released data's `gsm8k-0` / `olympiadbench-12`, else `default` (the file's name)."""
    for field in ("subset", "split"):
        if field in item:
            value = item[field]
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where}: field '{field}' must be a non-empty string")
            return check_text(value.strip(), f"{where}: field '{field}'")
    ident = item.get("id")
    if isinstance(ident, str):
        prefix, _, number = ident.rpartition("-")
        if prefix and number.isdigit():
            return check_text(prefix, f"{where}: field 'id'")
    return default


def read_steps_file(path: str) -> list[dict[str, Any]]:
    """ProcessBench-format rows: `problem`, `steps`, `label` (first wrong step, -1 if none),
    and the subset each row belongs to (`row_subset`). JSONL, or a JSON list (the released
    `gsm8k.json`, ...) or Parquet, read by `public_data.records`."""
    from tdrm_cli.public_data.records import BadRow, records

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--steps-file {path}: no such file")
    rows = []
    for place, item in records(p):
        if isinstance(item, BadRow):
            raise UsageError(f"{path} {place}: {item}")
        if not isinstance(item, dict):
            raise UsageError(f"{path} {place}: expected a JSON object")
        for field, kind in (("problem", str), ("steps", list), ("label", int)):
            if field not in item:
                raise UsageError(f"{path} {place}: missing field '{field}'")
            if not isinstance(item[field], kind) or isinstance(item[field], bool):
                raise UsageError(f"{path} {place}: field '{field}' must be {kind.__name__}")
        steps, label = item["steps"], item["label"]
        if not steps or not all(isinstance(s, str) for s in steps):
            raise UsageError(f"{path} {place}: field 'steps' must be a non-empty list of strings")
        for field, text in (("problem", item["problem"]), *(("steps", s) for s in steps)):
            check_text(text, f"{path} {place}: field '{field}'")
        if not -1 <= label < len(steps):
            raise UsageError(
                f"{path} {place}: field 'label' {label} is outside -1..{len(steps) - 1}"
            )
        # Steps after the first error have no label in ProcessBench: leave them out of the AUROC.
        truth = [1] * len(steps) if label < 0 else [1] * label + [0]
        rows.append(
            {
                "p_index": len(rows),
                "prompt": item["problem"],
                "steps": steps,
                "truth_full": truth,
                "subset": row_subset(item, f"{path} {place}", p.stem),
            }
        )
    if not rows:
        raise UsageError(f"--steps-file {path}: no rows")
    return rows


def steps_file_quality(
    prm: Any, rows: list[dict[str, Any]], fraction: float, batch_size: int, threshold: float
) -> dict[str, Any]:
    """One PRM on a ProcessBench file: the official protocol (`processbench`: fixed
    `threshold`, every row, per subset) and the `first_error_*` numbers at a threshold tuned
    on the first `fraction` of the rows (reported on the rest), with step AUROC."""
    values = prm.score(
        [r["prompt"] for r in rows], [r["steps"] for r in rows], batch_size=batch_size
    )
    pairs = [
        (v, t)
        for vs, r in zip(values, rows, strict=True)
        for v, t in zip(vs, r["truth_full"], strict=False)
    ]
    gold = [first_wrong(r["truth_full"]) for r in rows]
    cut = int(len(rows) * fraction)
    fit, rest = (
        list(range(cut)) or list(range(len(rows))),
        list(range(cut, len(rows))) or list(range(len(rows))),
    )
    tuned = M.best_threshold([values[i] for i in fit], [gold[i] for i in fit])
    bench = M.processbench([M.first_error(values[i], tuned) for i in rest], [gold[i] for i in rest])
    return {
        "solutions": len(rows),
        "processbench": M.processbench_official(
            values, gold, [r["subset"] for r in rows], threshold
        ),
        "step_auroc": M.auroc([v for v, _ in pairs], [t for _, t in pairs]),
        "first_error_threshold": tuned,
        **{f"first_error_{k}": v for k, v in bench.items()},
        "smoothness": M.smoothness(values),
        **M.degeneracy(values, step=([v for v, _ in pairs], [t for _, t in pairs])),
    }


# ---------------------------------------------------------------- the run


def check_inputs(cfg: EvalConfig) -> str | None:
    """Every input is checked before the run folder exists; returns the policy model path."""
    load_task(cfg.task)
    model_path = resolve_model(cfg.policy, "policy", ("sft", "rl"))[0] if cfg.policy else None
    for role, paths, stage in (
        ("bon", cfg.bon, "bon"),
        ("search", cfg.search, "search"),
        ("rl", cfg.rl, "rl"),
    ):
        for path in paths:
            require_complete(path, role, stage)
    return model_path


def prm_names(paths: list[str], baseline: bool = False) -> dict[str, str]:
    """path -> the PRM's name in the results: its folder's name (`prm-td`) where that is
    unique, else the shortest path suffix that tells it from the others (`a/model`,
    `b/model`). A path given twice is one PRM with one name. With `baseline`, no PRM is
    named like the policy-likelihood row."""
    parts = {path: Path(path).parts or (path,) for path in paths}
    entries = [*parts.values(), *([(LIKELIHOOD_BASELINE,)] if baseline else [])]

    def clash(own: tuple[str, ...], k: int) -> bool:  # another PRM's path ends the same way
        return sum(entry[-k:] == own[-k:] for entry in entries) > entries.count(own)

    names = {}
    for path, own in parts.items():
        k = 1
        while k < len(own) and clash(own, k):
            k += 1
        names[path] = (Path(path).name or path) if k == 1 else Path(*own[-k:]).as_posix()
        if baseline and names[path] == LIKELIHOOD_BASELINE:
            raise UsageError(
                f"--prm {path}: named like the '{LIKELIHOOD_BASELINE}' baseline row; give it "
                "by a longer path (e.g. its absolute one) or pass --no-policy-likelihood"
            )
    return names


def likelihood_baseline(cfg: EvalConfig, model_path: str):
    """The policy's own likelihood as an untrained PRM (`prm.policy_likelihood_prm`), or None."""
    from tdrm_cli.prm import policy_likelihood_prm

    if not cfg.policy_likelihood or not Path(model_path).is_dir():
        return None
    prm = policy_likelihood_prm(model_path, cfg.trust_remote_code, cfg.allow_pickle)
    if prm is None:
        log(f"eval: {cfg.policy} has untied embeddings; no '{LIKELIHOOD_BASELINE}' row")
    return prm


def run(cfg: EvalConfig) -> Path:
    from tdrm_cli.prm_formats import load_scoring_prms
    from tdrm_cli.report import write_report

    model_path = check_inputs(cfg)
    file_rows = read_steps_file(cfg.steps_file) if cfg.steps_file else None
    names = prm_names(cfg.prm, baseline=bool(cfg.policy and cfg.policy_likelihood))
    loaded = load_scoring_prms(
        cfg.prm, cfg.prm_format, cfg.prm_option, "prm", None, cfg.trust_remote_code,
        cfg.allow_pickle,
    )  # fmt: skip
    prms = {names[p]: prm for p, prm in zip(cfg.prm, loaded, strict=True)}
    with run_stage("eval", cfg) as run:
        for role, paths in (
            ("policy", [cfg.policy] if cfg.policy else []),
            ("prm", cfg.prm),
            ("bon", cfg.bon),
            ("search", cfg.search),
            ("rl", cfg.rl),
        ):
            for i, path in enumerate(paths):
                run.add_input(role if len(paths) == 1 else f"{role}{i}", path)
        results: dict[str, Any] = {"task": cfg.task, "split": cfg.split, "seed": cfg.seed}
        trajectories: dict[str, tuple[list[list[float]], list[int]]] = {}
        held_out = {names[p]: train_prm_flag(p) for p in cfg.prm}
        if model_path:
            rows, results["policy"] = sample_policy(cfg, model_path)
            results["coupling"] = M.coupling(
                [r["correct"] for r in rows], [r["step_truth"] for r in rows]
            )
            results["prm"] = {}
            baseline = likelihood_baseline(cfg, model_path)
            if baseline is not None:
                prms[LIKELIHOOD_BASELINE] = baseline
                held_out[LIKELIHOOD_BASELINE] = None
            for name, prm in prms.items():
                results["prm"][name], values = prm_quality(
                    prm, rows, cfg.threshold_fraction, cfg.batch_size
                )
                results["prm"][name]["train_prm_degenerate"] = held_out[name]
                trajectories[name] = (values, [r["correct"] for r in rows if r["steps"]])
        if file_rows:
            results["steps_file"] = {
                name: steps_file_quality(
                    prm, file_rows, cfg.threshold_fraction, cfg.batch_size, cfg.threshold
                )
                for name, prm in prms.items()
                if name != LIKELIHOOD_BASELINE  # the policy's likelihood is for its own samples
            }
        atomic_write_json(run.path / RESULTS, results)
        write_report(run.path, results, trajectories, cfg)
        run.complete(flat_metrics(results))
    return run.path


def flat_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics: policy numbers, then `<prm>/<metric>` for each PRM."""
    out = dict(results.get("policy") or {})
    if (results.get("coupling") or {}).get("coupling") is not None:
        out["coupling"] = results["coupling"]["coupling"]
    for section in ("prm", "steps_file"):
        for name, values in (results.get(section) or {}).items():
            for key in ("step_auroc", "first_error_f1", "ece_last_step", "smoothness"):
                if values.get(key) is not None:
                    out[f"{section}:{name}/{key}"] = round(values[key], 4)
            if values.get("degenerate") is not None:
                out[f"{section}:{name}/degenerate"] = values["degenerate"]
            official = (values.get("processbench") or {}).get("average_f1")
            if official is not None:
                out[f"{section}:{name}/processbench_average_f1"] = round(official, 4)
    return out
