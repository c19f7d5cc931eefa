"""`tdrm search`: step-level PRM-guided search: beam, greedy and DVTS.

setup (task, policy, PRMs) -> work (every method in `search.methods.METHODS` asked for,
with every PRM) -> save. Every method grows solutions one step at a time: the policy
(`search.policy.HFStepPolicy`) samples `--expand` next steps from each kept prefix, the
PRM (`search.scoring`) scores every new step, and the best prefixes are kept. The answer
is picked among the finished solutions by `--vote` on their `--agg` scores.

Nothing is computed twice: the policy continues every kept prefix from its KV cache, and
the PRM runs only the new step's tokens on top of the parent prefix's cached keys/values,
so per-step cost stays flat with depth (bench/search_cost.py). Problems are searched in
chunks to bound the memory the caches take.

Artifacts: `scores.parquet` (every finished solution with its step scores),
`results.json` (accuracy and generated tokens per problem per method x PRM; nothing
time-dependent), `search_accuracy_vs_tokens.png`.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from tdrm_cli import plots, voting
from tdrm_cli.configs.sample import SearchConfig
from tdrm_cli.console import TokenRate, console, fitted, log, progress
from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.prm_formats import load_scoring_prms
from tdrm_cli.runs import atomic_write_bytes, atomic_write_json, resolve_model, run_stage
from tdrm_cli.search.methods import METHODS, SearchResult, derive_seed
from tdrm_cli.search.policy import HFStepPolicy
from tdrm_cli.search.scoring import make_scorer
from tdrm_cli.solutions import graded_steps, parquet_bytes, records_table
from tdrm_cli.tasks import Problem, Task, load_task
from tdrm_cli.voting import aggregate

SCORES = "scores.parquet"
RESULTS = "results.json"
PLOT = "search_accuracy_vs_tokens.png"


def solution_rows(
    result: SearchResult, problems: list[Problem], task: Task, method: str, prm: str, agg: str
) -> list[dict]:
    return [
        {
            **graded_steps(task, problems[node.problem], node.steps, truth=False),
            "method": method,
            "prm": prm,
            "tree": node.tree,
            "step_scores": node.step_scores,
            "score": aggregate(node.step_scores, agg),
            "tokens": node.tokens,
            "ended": node.ended,
        }
        for node in result.finished
    ]


def evaluate(
    rows: list[dict], problems: list[Problem], tokens: list[int], method: str, prm: str, vote: str
) -> dict:
    """Accuracy of each vote over the finished solutions, the oracle, and the compute per problem."""
    per_problem: dict[str, list[dict]] = {p.id: [] for p in problems}
    for row in rows:
        per_problem[row["problem_id"]].append(row)
    hits = {"naive": 0, "weighted": 0, "majority": 0}
    oracle = 0
    for candidates in per_problem.values():
        answers, correct = [c["answer"] for c in candidates], [c["correct"] for c in candidates]
        scores = [c["score"] for c in candidates]
        for name in hits:
            hits[name] += voting.voted_correct(name, answers, correct, scores)
        oracle += int(any(correct))
    n = len(problems)
    return {
        "method": method,
        "prm": prm,
        "accuracy": hits[vote] / n,
        **{f"accuracy_{name}": count / n for name, count in hits.items()},
        "oracle": oracle / n,
        "tokens_per_problem": sum(tokens) / n,
        "finished_per_problem": len(rows) / n,
        "mean_steps": sum(len(r["steps"]) for r in rows) / max(len(rows), 1),
    }


COLUMNS = ("method", "prm", "problem_id", "prompt", "gold", "tree", "steps", "step_scores",
           "score", "answer", "correct", "tokens", "ended")  # fmt: skip


def write_scores(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    extra = {
        "method": pa.string(),
        "prm": pa.string(),
        "tree": pa.int64(),
        "step_scores": pa.list_(pa.float64()),
        "score": pa.float64(),
        "tokens": pa.int64(),
        "ended": pa.string(),
    }
    atomic_write_bytes(path, parquet_bytes(records_table(rows, COLUMNS, extra)))


def print_table(results: list[dict], problems: int, vote: str) -> None:
    """Accuracy and cost of every method x PRM (each one's seconds are on its line above)."""
    table = Table(
        title=f"step-level search, {problems} problems",
        caption=f"acc: {vote} vote over the finished solutions; naive / weighted: those votes; "
        "oracle: any finished solution right; tokens: generated per problem; sols: finished per problem",
    )
    for column in ("method", "prm", "acc", "naive", "weighted", "oracle", "tokens", "sols"):
        table.add_column(column, justify="left" if column in ("method", "prm") else "right")
    for r in results:
        table.add_row(
            r["method"],
            r["prm"],
            f"{r['accuracy']:.3f}",
            f"{r['accuracy_naive']:.3f}",
            f"{r['accuracy_weighted']:.3f}",
            f"{r['oracle']:.3f}",
            f"{r['tokens_per_problem']:,.0f}",
            f"{r['finished_per_problem']:.1f}",
        )
    console.print(fitted(table))


def load_policy(cfg: SearchConfig, model_path: str, labels: list[str], prms: list) -> HFStepPolicy:
    """The step policy; a PRM whose separator differs from the policy's is noted."""
    try:
        policy = HFStepPolicy(
            model_path,
            cfg.batch_size,
            cfg.temperature,
            cfg.top_p,
            cfg.max_step_tokens,
            cfg.trust_remote_code,
            allow_pickle=cfg.allow_pickle,
        )
    except (OSError, ValueError) as e:
        first = first_line(e)
        raise UsageError(f"--policy {cfg.policy}: could not load the model ({first})") from None
    for label, prm in zip(labels, prms, strict=True):
        if prm.separator != policy.separator:
            log(
                f"note: PRM {label} separator {prm.separator!r} differs from the policy's {policy.separator!r}"
            )
    return policy


class Metered:
    """The step policy, moving a progress bar one expansion (a depth of a chunk of
    problems) at a time and counting the tokens it generates."""

    def __init__(self, policy: HFStepPolicy, bar, job):
        self.policy, self.bar, self.job = policy, bar, job
        self.expansions, self.tokens = 0, 0

    def next_steps(self, prefixes, n: int, seed: int):
        steps = self.policy.next_steps(prefixes, n, seed)
        self.expansions += 1
        self.tokens += sum(step.num_tokens for row in steps for step in row)
        self.bar.update(self.job, completed=self.expansions, tokens=self.tokens)
        return steps


def search_all(
    cfg: SearchConfig, task: Task, problems: list[Problem], policy: HFStepPolicy, labels, prms
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Every method with every PRM: (solution rows, result rows, seconds per method/PRM)."""
    questions = [p.question for p in problems]
    all_rows, results, seconds = [], [], {}
    for method in cfg.methods:
        for label, prm in zip(labels, prms, strict=True):
            start = time.perf_counter()
            with progress(TokenRate()) as bar:
                job = bar.add_task(f"{method}/{label}", total=None, tokens=0)
                metered = Metered(policy, bar, job)
                result = METHODS[method](
                    questions,
                    metered,
                    make_scorer(prm, cfg.batch_size),
                    task,
                    cfg,
                    derive_seed(cfg.seed, method),
                )
                bar.update(job, total=metered.expansions, completed=metered.expansions)
            seconds[f"{method}/{label}"] = round(time.perf_counter() - start, 1)
            rows = solution_rows(result, problems, task, method, label, cfg.agg)
            results.append(evaluate(rows, problems, result.tokens, method, label, cfg.vote))
            all_rows += rows
            log(
                f"{method}/{label}: accuracy {results[-1]['accuracy']:.3f}, "
                f"{results[-1]['tokens_per_problem']:.0f} tokens/problem, {result.depth} steps, "
                f"{seconds[f'{method}/{label}']:.1f}s (generate {result.generate_s:.1f}s, score {result.score_s:.1f}s)"
            )
    return all_rows, results, seconds


def save(run_path: Path, cfg: SearchConfig, problems: int, labels: list[str], all_rows, results):
    """scores.parquet, results.json and the accuracy-vs-tokens plot."""
    write_scores(run_path / SCORES, all_rows)
    atomic_write_json(
        run_path / RESULTS,
        {
            "problems": problems,
            "methods": cfg.methods,
            "prms": dict(zip(labels, cfg.prm, strict=True)),
            "beam_width": cfg.beam_width,
            "expand": cfg.expand,
            "agg": cfg.agg,
            "vote": cfg.vote,
            "seed": cfg.seed,
            "rows": results,
        },
    )
    plots.search_accuracy_vs_tokens(
        results, run_path / PLOT, f"step-level search on {problems} problems ({cfg.task})"
    )


def run(cfg: SearchConfig) -> Path:
    from tdrm_cli.stages.bon import prm_labels

    # Inputs are checked (and PRMs loaded) before a run folder exists: bad input leaves nothing behind.
    task = load_task(cfg.task)
    model_path, _ = resolve_model(cfg.policy, "policy")
    labels = prm_labels(cfg.prm)
    prms = load_scoring_prms(
        cfg.prm, cfg.prm_format, cfg.prm_option, "prm", None, cfg.trust_remote_code,
        cfg.allow_pickle,
    )  # fmt: skip
    problems = task.problems(cfg.split, cfg.problems)
    with run_stage("search", cfg) as run:
        run.add_input("policy", cfg.policy)
        for i, path in enumerate(cfg.prm):
            run.add_input(f"prm{i}", path)
        policy = load_policy(cfg, model_path, labels, prms)
        all_rows, results, seconds = search_all(cfg, task, problems, policy, labels, prms)
        save(run.path, cfg, len(problems), labels, all_rows, results)
        metrics = {
            "accuracy": results[0]["accuracy"],
            "problems": len(problems),
            "seconds": seconds,
            "results": {f"{r['method']}/{r['prm']}": round(r["accuracy"], 4) for r in results},
        }
        run.complete(metrics)
        print_table(results, len(problems), cfg.vote)
    return run.path
