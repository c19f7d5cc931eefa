"""`tdrm bon`: best-of-N accuracy vs N for every PRM x aggregation x vote.

setup (PRMs, then the candidates: `--n` samples per problem from `--policy`, or the
rollouts of a `--samples` collect run) -> score every candidate with every PRM, all its
steps in one forward pass -> accuracy at N = 1, 2, 4, ... for each PRM x aggregation x
vote, with majority vote (no PRM) and pass@N (oracle) as references -> save.

The candidates are sampled once and shared by every PRM, and smaller N use the same
random subsets for every PRM and vote (voting.py), so all comparisons are paired.

Artifacts: `scores.parquet` (one row per candidate, one `scores_<prm>` column of step
scores per PRM), `results.json` (one row per curve point; nothing time-dependent, so a
fixed seed gives the same file), `bon_accuracy.png`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table

from tdrm_cli import plots, voting
from tdrm_cli.configs.sample import BonConfig
from tdrm_cli.console import TokenRate, console, fitted, log, progress
from tdrm_cli.errors import UsageError
from tdrm_cli.generation import Sampling, check_backend
from tdrm_cli.prm import PRM
from tdrm_cli.runs import (
    atomic_write_bytes,
    atomic_write_json,
    resolve_model,
    run_stage,
)
from tdrm_cli.solutions import (
    load_policy,
    parquet_bytes,
    records_table,
    rollouts_table,
    row_problem,
)
from tdrm_cli.tasks import load_task

SCORES = "scores.parquet"
RESULTS = "results.json"
PLOT = "bon_accuracy.png"
COLUMNS = ("problem_id", "prompt", "gold", "sample_idx", "steps", "answer", "correct", "num_tokens")


# ---------------------------------------------------------------- setup


def prm_labels(paths: list[str]) -> list[str]:
    """Short, distinct names for the PRMs: the run folder's name (`prm-td`), numbered on clashes."""
    names = []
    for path in paths:
        p = Path(path)
        names.append(p.parent.name if p.name == "model" and p.parent.name else p.name or str(path))
    return [f"{name}-{i}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def load_prms(cfg: BonConfig) -> list[PRM]:
    """Every --prm, each in its format (`prm_formats`: tdrm's own or a public PRM's)."""
    from tdrm_cli.prm_formats import load_scoring_prms

    return load_scoring_prms(
        cfg.prm, cfg.prm_format, cfg.prm_option, "prm", None, cfg.trust_remote_code,
        cfg.allow_pickle,
    )  # fmt: skip


SAMPLE_COLUMNS = ("problem_id", "prompt", "gold", "sample_idx", "steps", "answer", "correct")


def read_samples(cfg: BonConfig) -> list[dict[str, Any]]:
    """The first `--problems` problems of a collect run, `--n` rollouts each (by sample_idx)."""
    # only collect runs: imported data has no final answers to vote on
    path, table = rollouts_table(cfg.samples, "samples", SAMPLE_COLUMNS, ("collect",))
    groups: dict[str, list[dict[str, Any]]] = {}
    # pyarrow keeps a missing answer None (pandas makes it NaN)
    for i, row in enumerate(table.select(list(SAMPLE_COLUMNS)).to_pylist()):
        problem = row_problem(row)
        if problem:
            raise UsageError(f"{path}: row {i} (problem {row['problem_id']}): {problem}")
        groups.setdefault(row["problem_id"], []).append(row)
    chosen = list(groups.items())[: cfg.problems]
    for problem_id, group in chosen:
        if len(group) < cfg.n:
            raise UsageError(
                f"--n {cfg.n}: --samples {cfg.samples} has only {len(group)} samples for {problem_id}"
            )
    if len(groups) < cfg.problems:
        log(f"--samples {cfg.samples}: holds {len(groups)} problems, using all of them")
    return [
        {
            **r,
            "sample_idx": int(r["sample_idx"]),
            "steps": [str(s) for s in r["steps"] or []],
            "correct": int(r["correct"]),
            "num_tokens": None,
        }
        for _, group in chosen
        for r in sorted(group, key=lambda r: r["sample_idx"])[: cfg.n]
    ]


def sample_candidates(cfg: BonConfig, model_path: str) -> tuple[list[dict[str, Any]], int]:
    """`--n` samples per problem from the policy, split into steps and checked; (rows, tokens)."""
    task = load_task(cfg.task)
    problems = task.problems(cfg.split, cfg.problems)
    policy = load_policy(
        model_path, cfg.backend, cfg.batch_size, cfg.trust_remote_code, cfg.allow_pickle
    )
    sampling = Sampling(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )
    tokens = 0
    with progress(TokenRate()) as bar:
        job = bar.add_task("sampling", total=len(problems) * cfg.n, tokens=0)

        def on_batch(sequences: int, generated: int) -> None:
            nonlocal tokens
            tokens += generated
            bar.update(job, advance=sequences, tokens=tokens)

        groups = policy.sample(task, problems, sampling, on_batch=on_batch)
    rows = [row for group in groups for row in group]
    return rows, tokens


# ---------------------------------------------------------------- scoring and curves


def score_candidates(
    rows: list[dict[str, Any]], prms: list[PRM], labels: list[str], batch_size: int
) -> None:
    """Add `scores_<label>`: every candidate's step values under every PRM (one pass per candidate)."""
    chunk = batch_size * 8
    with progress() as bar:
        for prm, label in zip(prms, labels, strict=True):
            job = bar.add_task(f"scoring {label}", total=len(rows))
            values: list[list[float]] = []
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                values += prm.score(
                    [r["prompt"] for r in part], [r["steps"] for r in part], batch_size=batch_size
                )
                bar.update(job, advance=len(part))
            for row, v in zip(rows, values, strict=True):
                row[f"scores_{label}"] = v


def by_problem(rows: list[dict[str, Any]], column: str) -> list[list[Any]]:
    """`column` of every candidate, grouped per problem in candidate order."""
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row[column])
    return list(groups.values())


def choices(value: str, all_of: tuple[str, ...]) -> list[str]:
    return list(all_of) if value == "all" else [value]


def prm_arrays(
    rows: list[dict[str, Any]], label: str, agg: str, answers: list, correct: list
) -> dict[str, Any]:
    """`voting.as_arrays` of the candidates with one PRM's solution scores under `agg`."""
    scores = [
        [voting.aggregate(v, agg) for v in values] for values in by_problem(rows, f"scores_{label}")
    ]
    return voting.as_arrays(answers, correct, scores)


def curves(rows: list[dict[str, Any]], labels: list[str], cfg: BonConfig) -> list[dict[str, Any]]:
    """One row per (curve, N): pass@N, majority, and every PRM x aggregation x PRM vote."""
    answers, correct = by_problem(rows, "answer"), by_problem(rows, "correct")
    ns = voting.powers_of_two(cfg.n)
    votes = [v for v in choices(cfg.vote, voting.PRM_VOTES) if v != "majority"]
    plain = voting.as_arrays(answers, correct, None)
    specs: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
        ("pass@N", {"prm": None, "agg": None, "vote": None}, plain, None),
        ("majority", {"prm": None, "agg": None, "vote": "majority"}, plain, "majority"),
    ]
    for agg in choices(cfg.agg, voting.AGGREGATIONS):
        for label in labels:
            arrays = prm_arrays(rows, label, agg, answers, correct)
            for vote in votes:
                specs.append(
                    (
                        f"{label}/{agg}/{vote}",
                        {"prm": label, "agg": agg, "vote": vote},
                        arrays,
                        vote,
                    )
                )
    out = []
    for name, keys, arrays, vote in specs:
        for n in ns:
            mean, std = voting.accuracy_at_n(arrays, None, None, vote, n, cfg.subsets, cfg.seed)
            out.append({"name": name, **keys, "n": n, "accuracy": mean, "std": std})
    return out


def against_majority(
    rows: list[dict[str, Any]], labels: list[str], cfg: BonConfig
) -> list[dict[str, Any]]:
    """Every PRM x aggregation's weighted vote minus majority at the largest N, per problem
    on the same candidates, with a paired bootstrap 95% interval."""
    import numpy as np

    answers, correct = by_problem(rows, "answer"), by_problem(rows, "correct")
    plain = voting.as_arrays(answers, correct, None)
    m = plain["ids"].shape[1]
    everything = np.tile(np.arange(m), (plain["ids"].shape[0], 1))
    majority = voting.vote_correct(plain, "majority", everything)
    out = []
    for agg in choices(cfg.agg, voting.AGGREGATIONS):
        for label in labels:
            arrays = prm_arrays(rows, label, agg, answers, correct)
            weighted = voting.vote_correct(arrays, "weighted", everything)
            diff, low, high = voting.paired_bootstrap(weighted, majority, seed=cfg.seed)
            out.append(
                {
                    "name": f"{label}/{agg}/weighted",
                    "n": m,
                    "minus_majority": round(diff, 4),
                    "ci95": [round(low, 4), round(high, 4)],
                    "hits": weighted.astype(int).tolist(),
                    "majority_hits": majority.astype(int).tolist(),
                }
            )
    return out


# ---------------------------------------------------------------- save and show


def write_scores(path: Path, rows: list[dict[str, Any]], labels: list[str]) -> None:
    import pyarrow as pa

    scores = {f"scores_{label}": pa.list_(pa.float64()) for label in labels}
    atomic_write_bytes(path, parquet_bytes(records_table(rows, [*COLUMNS, *scores], scores)))


def print_table(results: list[dict[str, Any]], problems: int, n_max: int) -> None:
    ns = voting.powers_of_two(n_max)
    names = list(dict.fromkeys(r["name"] for r in results))
    show_std = console.width >= max(len(name) for name in names) + 14 * len(ns) + 4
    spread = "mean ± std over subsets" if show_std else "mean over subsets; std in results.json"
    table = Table(title=f"best-of-N accuracy, {problems} problems ({spread})")
    table.add_column("method")
    for n in ns:
        table.add_column(f"N={n}", justify="right")
    cells: dict[str, dict[int, str]] = {}
    for r in results:
        std = f"±{r['std']:.3f}" if show_std and r["std"] > 0 else ""
        cells.setdefault(r["name"], {})[r["n"]] = f"{r['accuracy']:.3f}{std}"
    for name in names:
        style = "dim" if name in ("pass@N", "majority") else None
        table.add_row(name, *(cells[name].get(n, "") for n in ns), style=style)
    console.print(fitted(table))


def summary(results: list[dict[str, Any]], n_max: int) -> dict[str, Any]:
    """Accuracy at the largest N of every curve; `accuracy` is the first PRM curve's."""
    at_max = {r["name"]: round(r["accuracy"], 4) for r in results if r["n"] == n_max}
    prm_curves = [name for name in at_max if name not in ("pass@N", "majority")]
    return {
        "accuracy": at_max[prm_curves[0]] if prm_curves else None,
        "pass@n": at_max["pass@N"],
        "majority": at_max["majority"],
        "n": n_max,
        "at_max_n": at_max,
    }


def run(cfg: BonConfig) -> Path:
    # Inputs are checked (and PRMs loaded) before a run folder exists: bad input leaves nothing behind.
    model_path, rows, tokens = None, None, None
    if cfg.policy is not None:
        load_task(cfg.task)
        check_backend(cfg.backend)
        model_path, _ = resolve_model(cfg.policy, "policy")
    else:
        rows = read_samples(cfg)
    labels = prm_labels(cfg.prm)
    prms = load_prms(cfg)
    with run_stage("bon", cfg) as run:
        if cfg.policy is not None:
            run.add_input("policy", cfg.policy)
        else:
            run.add_input("samples", cfg.samples)
        for i, path in enumerate(cfg.prm):
            run.add_input(f"prm{i}", path)
        start = time.perf_counter()
        if model_path is not None:
            rows, tokens = sample_candidates(cfg, model_path)
        sampled = time.perf_counter()
        score_candidates(rows, prms, labels, cfg.batch_size)
        scored = time.perf_counter()
        results = curves(rows, labels, cfg)
        paired = against_majority(rows, labels, cfg)
        problems = len({r["problem_id"] for r in rows})
        write_scores(run.path / SCORES, rows, labels)
        atomic_write_json(
            run.path / RESULTS,
            {
                "problems": problems,
                "candidates_per_problem": cfg.n,
                "ns": voting.powers_of_two(cfg.n),
                "subsets": cfg.subsets,
                "seed": cfg.seed,
                "prms": dict(zip(labels, cfg.prm, strict=True)),
                "rows": results,
                "vs_majority": paired,
            },
        )
        plots.bon_accuracy(
            results, run.path / PLOT, f"best-of-N on {problems} problems ({cfg.task}, {cfg.split})"
        )
        metrics = summary(results, cfg.n)
        metrics["vs_majority"] = {p["name"]: [p["minus_majority"], *p["ci95"]] for p in paired}
        metrics.update(
            problems=problems,
            generated_tokens=tokens,
            sampling_s=round(sampled - start, 1),
            scoring_s=round(scored - sampled, 1),
            curves_s=round(time.perf_counter() - scored, 1),
        )
        run.complete(metrics)
        print_table(results, problems, cfg.n)
    return run.path
