"""`tdrm collect`: policy rollouts with verdicts, Monte-Carlo step labels and exact step truth.

For every problem the policy samples `--n` solutions; each is split into steps on the
policy's separator and checked by the task's verifier (a solution without a final
answer is kept with `correct=0`, `answer=None`). With `--mc-rollouts K`, every proper
step prefix gets K continuations and its label is the fraction that reach the gold
answer (Math-Shepherd soft label; "any reached" is the hard label, chosen at train
time); the last step's label is the sample's own verdict. Tasks that know exact step
correctness (arith) add `step_truth`, and the summary then reports process–outcome
coupling (`metrics.coupling`): the share of correct samples whose steps are all right,
and P(correct | first wrong step at k).

Work is cut into shards of `--shard-size` problems, each written atomically to
`shards/`. A shard's seeds depend only on (--seed, shard index), so `--resume` skips
finished shards and still ends with exactly the table of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from tdrm_cli.configs.sample import CollectConfig
from tdrm_cli.console import TokenRate, console, fitted, log, progress
from tdrm_cli.errors import UsageError
from tdrm_cli.generation import Sampling, check_backend
from tdrm_cli.metrics import coupling
from tdrm_cli.runs import (
    atomic_write_bytes,
    atomic_write_json,
    is_run_dir,
    manifest_sha256,
    resolve_model,
    run_stage,
)
from tdrm_cli.solutions import ROLLOUT_COLUMNS as COLUMNS
from tdrm_cli.solutions import (
    ROLLOUTS,
    Policy,
    load_policy,
    parquet_bytes,
    records_table,
    schema,
)
from tdrm_cli.steps import (
    join_steps,
    split_steps,
)
from tdrm_cli.tasks import Problem, Task, grade, load_task

SHARDS = "shards"
PLAN = "plan.json"
# Settings that change what a shard contains; a resumed run must match them exactly.
PLAN_KEYS = (
    "task",
    "split",
    "problems",
    "n",
    "mc_rollouts",
    "temperature",
    "top_p",
    "max_new_tokens",
    "batch_size",
    "backend",
    "shard_size",
    "seed",
)


def read_rollouts(path: str | Path):
    """`rollouts.parquet` (or a collect run folder) as a DataFrame whose list cells are Python lists."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path / ROLLOUTS if path.is_dir() else path)
    return pd.DataFrame(table.to_pydict(), columns=list(COLUMNS))


def open_policy(cfg: CollectConfig, model_path: str) -> Policy:
    return load_policy(
        model_path, cfg.backend, cfg.batch_size, cfg.trust_remote_code, cfg.allow_pickle
    )


def shard_seed(seed: int, shard: int, phase: str) -> int:
    """A seed for one phase of one shard, independent of which shards ran before."""
    digest = hashlib.sha256(f"{seed}|{shard}|{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---------------------------------------------------------------- progress


class Meter:
    """Moves the bar smoothly through a shard's phases and counts generated tokens."""

    def __init__(self, bar, task_id):
        self.bar, self.task_id, self.tokens = bar, task_id, 0
        self.worth = 0.0  # problems credited per generated sequence in the current phase

    def phase(self, name: str, problems: float, sequences: int) -> None:
        self.worth = problems / max(sequences, 1)
        self.bar.update(self.task_id, description=name)

    def on_batch(self, sequences: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(self.task_id, advance=sequences * self.worth, tokens=self.tokens)

    def shard_done(self, completed: int) -> None:
        self.bar.update(self.task_id, completed=completed)  # exact count, no float drift


# ---------------------------------------------------------------- one shard


def add_mc_labels(
    rows: list[dict],
    problems: dict[str, Problem],
    prompts: dict[str, str],
    policy: Policy,
    task: Task,
    cfg: CollectConfig,
    seed: int,
    meter: Meter,
    shard_problems: int,
) -> None:
    """Label step t < T by the share of K continuations of steps[:t] that reach the gold answer."""
    sep, k = policy.separator, cfg.mc_rollouts
    jobs = [(r, t) for r, row in enumerate(rows) for t in range(1, len(row["steps"]))]
    texts = [
        prompts[rows[r]["problem_id"]] + join_steps(rows[r]["steps"][:t], sep) + sep
        for r, t in jobs
    ]
    # Similar lengths side by side waste less left padding; a stable sort keeps it deterministic.
    order = sorted(range(len(jobs)), key=lambda i: len(texts[i]))
    meter.phase("mc labels", shard_problems / 2, len(jobs) * k)
    sampling = Sampling(
        n=k,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )
    continuations = policy.backend.generate(
        [texts[i] for i in order], sampling, on_batch=meter.on_batch
    )
    label: dict[tuple[int, int], float] = {}
    for i, completions in zip(order, continuations, strict=True):
        r, t = jobs[i]
        problem, prefix = problems[rows[r]["problem_id"]], rows[r]["steps"][:t]
        wins = sum(grade(task, problem, prefix + split_steps(c.text, sep))[1] for c in completions)
        label[r, t] = wins / k
    for r, row in enumerate(rows):
        steps = len(row["steps"])
        row["step_labels"] = [label[r, t] for t in range(1, steps)] + (
            [float(row["correct"])] if steps else []
        )


def collect_shard(
    index: int,
    problems: list[Problem],
    policy: Policy,
    task: Task,
    cfg: CollectConfig,
    meter: Meter,
) -> list[dict]:
    prompts = {p.id: policy.prompt(p.question) for p in problems}
    worth = len(problems) / 2 if cfg.mc_rollouts else len(problems)
    meter.phase("sampling", worth, len(problems) * cfg.n)
    sampling = Sampling(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=shard_seed(cfg.seed, index, "samples"),
    )
    groups = policy.sample(task, problems, sampling, on_batch=meter.on_batch)
    rows = [{**row, "step_labels": None, "policy": cfg.policy} for group in groups for row in group]
    if cfg.mc_rollouts:
        seed = shard_seed(cfg.seed, index, "mc")
        add_mc_labels(
            rows,
            {p.id: p for p in problems},
            prompts,
            policy,
            task,
            cfg,
            seed,
            meter,
            len(problems),
        )
    return rows


def write_shard(path: Path, rows: list[dict]) -> None:

    atomic_write_bytes(path, parquet_bytes(records_table(rows, COLUMNS)))


# ---------------------------------------------------------------- the run


def check_plan(shard_dir: Path, cfg: CollectConfig) -> None:
    """Refuse to resume shards written with other settings (they would not fit together)."""
    plan = {key: getattr(cfg, key) for key in PLAN_KEYS}
    plan["policy"] = cfg.policy
    plan["policy_sha256"] = manifest_sha256(Path(cfg.policy)) if is_run_dir(cfg.policy) else None
    path = shard_dir / PLAN
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in plan if old.get(key) != plan[key]]
        if changed:
            key = changed[0]
            raise UsageError(
                f"--resume: shards in {shard_dir} were written with {key}={old.get(key)!r}, now {plan[key]!r} "
                f"(use the same settings, or --overwrite)"
            )
    else:
        atomic_write_json(path, plan)


def collect_all(
    cfg: CollectConfig, problems: list[Problem], policy: Policy, task: Task, shard_dir: Path
) -> tuple[int, float]:
    """Write every missing shard; returns (generated tokens, seconds) of this invocation."""
    shards = [problems[i : i + cfg.shard_size] for i in range(0, len(problems), cfg.shard_size)]
    todo = [i for i in range(len(shards)) if not shard_path(shard_dir, i).is_file()]
    if len(todo) < len(shards):
        log(f"resuming: {len(shards) - len(todo)} of {len(shards)} shards already written")
    start = time.perf_counter()
    with progress(TokenRate("problems")) as bar:
        meter = Meter(
            bar, bar.add_task("sampling", total=sum(len(shards[i]) for i in todo), tokens=0)
        )
        done = 0
        for i in todo:
            write_shard(
                shard_path(shard_dir, i), collect_shard(i, shards[i], policy, task, cfg, meter)
            )
            done += len(shards[i])
            meter.shard_done(done)
    return meter.tokens, time.perf_counter() - start


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.parquet"


def merge_shards(shard_dir: Path, out: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(shard_dir.glob("shard-*.parquet"))
    table = pa.concat_tables([pq.read_table(p, schema=schema(COLUMNS)) for p in paths])
    atomic_write_bytes(out, parquet_bytes(table))
    return table.to_pylist()


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize(rows: list[dict], tokens: int, seconds: float, policy: Policy) -> dict[str, Any]:
    by_problem: dict[str, int] = {}
    for row in rows:
        by_problem[row["problem_id"]] = max(by_problem.get(row["problem_id"], 0), row["correct"])
    truths = [row["step_truth"] for row in rows if row["step_truth"] is not None]
    metrics: dict[str, Any] = {
        "problems": len(by_problem),
        "samples": len(rows),
        "pass@1": _mean([row["correct"] for row in rows]),
        "pass@n": _mean(list(by_problem.values())),
        # A solution with no steps at all counts as wrong: it never did a correct step.
        "wrong_step_frac": _mean([float(not t or min(t) == 0) for t in truths]),
        "no_answer_frac": _mean([float(row["answer"] is None) for row in rows]),
        "mean_steps": _mean([len(row["steps"]) for row in rows]),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "prompt_format": policy.prompt_format,
        "separator": policy.separator,
    }
    pairs = [
        (label, truth)
        for row in rows
        if row["step_labels"] is not None and row["step_truth"] is not None
        for label, truth in zip(row["step_labels"], row["step_truth"], strict=False)
    ]
    coupled = coupling([row["correct"] for row in rows], [row["step_truth"] for row in rows])
    if coupled is not None:
        metrics.update(coupled)
    if pairs:
        metrics["mc_label_mean_correct_steps"] = _mean(
            [label for label, truth in pairs if truth == 1]
        )
        metrics["mc_label_mean_wrong_steps"] = _mean(
            [label for label, truth in pairs if truth == 0]
        )
    return metrics


def print_summary(metrics: dict[str, Any]) -> None:
    table = Table(title="collect summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "problems",
        "samples",
        "pass@1",
        "pass@n",
        "wrong_step_frac",
        "no_answer_frac",
        "mean_steps",
        "tokens_per_s",
        "mc_label_mean_correct_steps",
        "mc_label_mean_wrong_steps",
        "coupling",
    ):
        if metrics.get(key) is not None:
            table.add_row(
                key, f"{metrics[key]:,}" if isinstance(metrics[key], int) else f"{metrics[key]:.4g}"
            )
    console.print(fitted(table))
    if "p_correct_by_first_error" in metrics:
        console.print(coupling_line(metrics), highlight=False)


def coupling_line(metrics: dict[str, Any]) -> str:
    """One line on process–outcome coupling (from `metrics.coupling`'s fields), with a
    yellow warning when most right answers come from wrong steps."""
    by_k, sizes = metrics["p_correct_by_first_error"], metrics["samples_by_first_error"]
    conditional = ", ".join(
        f"{k} {'–' if p is None else f'{p:.3f}'} (n={sizes[k]})" for k, p in by_k.items()
    )
    value = metrics["coupling"]
    share = (
        "no correct samples"
        if value is None
        else f"{metrics['coupled_correct']} of {metrics['correct_samples']} correct samples "
        f"({value:.1%}) have every step right"
    )
    line = (
        f"process–outcome coupling: {share}; P(correct | first wrong step k, 0-based): "
        f"{conditional}"
    )
    if value is not None and value < 0.5:
        line += (
            "\n[yellow]warning: most right answers come from wrong steps: the outcome hardly "
            "depends on the steps, so no PRM can learn step verification from these rollouts[/]"
        )
    return line


def run(cfg: CollectConfig) -> Path:
    # Every input is checked before a run folder exists, so bad flags leave nothing behind.
    task = load_task(cfg.task)
    model_path, _ = resolve_model(cfg.policy, "policy")
    check_backend(cfg.backend)
    problems = task.problems(cfg.split, cfg.problems)
    with run_stage("collect", cfg) as run:
        run.add_input("policy", cfg.policy)
        shard_dir = run.path / SHARDS
        check_plan(shard_dir, cfg)
        policy = open_policy(cfg, model_path)
        log(
            f"policy {cfg.policy}: prompt format '{policy.prompt_format}', separator {policy.separator!r}, backend {cfg.backend}"
        )
        tokens, seconds = collect_all(cfg, problems, policy, task, shard_dir)
        rows = merge_shards(shard_dir, run.path / ROLLOUTS)
        metrics = summarize(rows, tokens, seconds, policy)
        atomic_write_json(run.path / "metrics.json", metrics)
        run.complete(metrics)
        shutil.rmtree(shard_dir, ignore_errors=True)  # rollouts.parquet holds every row now
        print_summary(metrics)
    return run.path
