"""`tdrm search`: step-level PRM-guided search: beam, greedy and DVTS.

Every method grows solutions one step at a time (search-and-learn style):

- `beam`: keep `--beam-width` prefixes per problem; expand each with `--expand`
  sampled next steps; the PRM scores every new step; keep the best prefixes.
- `greedy`: the same with one kept prefix.
- `dvts`: `--beam-width` independent subtrees per problem, each a greedy search
  (diverse verifier tree search), so one strong early step cannot take all the budget.

A step is generated from the prompt + the kept prefix until the separator, EOS or
`--max-step-tokens`; prefixes are never regenerated. A prefix is finished when the model
stops (EOS), states a final answer, hits a step/token/depth limit; finished prefixes are
kept and take up one of their tree's slots; a prefix sampled twice in a tree is kept once
(search-and-learn's `filter_duplicates`). The answer is picked among the finished
solutions by `--vote` on their `--agg` scores.

Nothing is computed twice: the policy continues every kept prefix from its KV cache, and
the PRM runs only the new step's tokens on top of the parent prefix's cached keys/values
(`KVScorer`; equal to scoring the whole prefix in one pass, which `OnePassScorer` does
for models without a plain full-attention cache). Per-step cost therefore stays flat
with depth (bench/search_cost.py). Problems are searched in chunks to bound the memory
the caches take.

Artifacts: `scores.parquet` (every finished solution with its step scores),
`results.json` (accuracy and generated tokens per problem per method x PRM; nothing
time-dependent), `search_accuracy_vs_tokens.png`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table

from tdrm_cli import plots, voting
from tdrm_cli.config import SearchConfig
from tdrm_cli.console import console, log
from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.prefix_cache import Cached, cache_arg, make_batch, row_cached, supports_prefix_cache
from tdrm_cli.prm import load_prm
from tdrm_cli.runs import atomic_write_bytes, atomic_write_json, resolve_model, run_stage
from tdrm_cli.steps import DEFAULT_SEPARATOR, build_prompt, encode_pieces, read_policy_meta
from tdrm_cli.tasks import Problem, Task, grade, load_task
from tdrm_cli.voting import aggregate

SCORES = "scores.parquet"
RESULTS = "results.json"
PLOT = "search_accuracy_vs_tokens.png"

# ---------------------------------------------------------------- step generation


@dataclass
class Step:
    text: str
    num_tokens: int
    """Generated tokens, the separator or EOS included."""
    stop: str
    """Why generation ended: "separator", "eos" or "length"."""
    state: Any = None
    """The policy's state after this step (its KV cache), to continue from it."""


@dataclass
class Prefix:
    """What a policy or scorer sees of a search node; `state` is its own, from the last call."""

    question: str
    steps: list[str]
    state: Any = None


class StepPolicy(Protocol):
    def next_steps(self, prefixes: Sequence[Prefix], n: int, seed: int) -> list[list[Step]]:
        """`n` sampled next steps for every prefix."""
        ...


class StepScorer(Protocol):
    def score_last(self, prefixes: Sequence[Prefix]) -> list[tuple[float, Any]]:
        """The value of every prefix's last step, and the state to score its children from.
        `prefix.state` is the state returned for its parent (None at the root)."""
        ...


class OnePassScorer:
    """Scores the whole prefix in one forward pass (PRM.score) and keeps no state."""

    def __init__(self, prm: Any, batch_size: int = 32):
        self.prm, self.batch_size = prm, batch_size

    def score_last(self, prefixes: Sequence[Prefix]) -> list[tuple[float, Any]]:
        values = self.prm.score(
            [p.question for p in prefixes], [p.steps for p in prefixes], batch_size=self.batch_size
        )
        return [(v[-1], None) for v in values]


class KVScorer:
    """Scores only the new step's tokens, on top of the parent prefix's cached keys/values.

    Equal to `PRM.score` on the whole prefix (causal attention; the PRM tokenizes
    piecewise, so a child's tokens extend its parent's); tests check it."""

    def __init__(self, prm: Any, batch_size: int = 32):
        self.prm, self.batch_size = prm, batch_size
        self.cache_arg = cache_arg(prm.model)
        self._no_steps = len(encode_pieces(prm.tokenizer, "", [], prm.separator)[0])

    def _ids(self, prefix: Prefix) -> list[int]:
        """The prefix's PRM tokens: its parent's plus the new step's piece (piecewise tokenization)."""
        if prefix.state is None:
            return self.prm.encode(prefix.question, prefix.steps).ids
        ids, _ = encode_pieces(self.prm.tokenizer, "", prefix.steps[-1:], self.prm.separator)
        return prefix.state.ids + ids[self._no_steps :]

    def score_last(self, prefixes: Sequence[Prefix]) -> list[tuple[float, Any]]:
        import torch

        rows = [Cached(self._ids(p), p.state.kv if p.state else None) for p in prefixes]
        out: list[tuple[float, Any] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = make_batch(
                [rows[i] for i in chunk], self.prm.tokenizer.pad_token_id, self.prm.device
            )
            c = batch.width_cached
            with torch.inference_mode():
                logits = self.prm.model(
                    input_ids=batch.input_ids[:, c:],
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids[:, c:],
                    use_cache=True,
                    **{self.cache_arg: batch.cache},
                ).logits
            values = torch.sigmoid(logits[:, -1, 0].float()).tolist()
            for j, i in enumerate(chunk):
                out[i] = (values[j], row_cached(batch, batch.cache, j, [], 0))
        return out


def make_scorer(prm: Any, batch_size: int) -> StepScorer:
    return (
        KVScorer(prm, batch_size)
        if supports_prefix_cache(prm.model) and getattr(prm, "head", "linear") == "linear"
        else OnePassScorer(prm, batch_size)
    )


def separator_stop(tokenizer: Any, separator: str, prompt_width: int, tail: int = 8):
    """A StoppingCriteria ending a row once its generated tail decodes to text holding the separator."""
    import torch
    from transformers import StoppingCriteria

    class SeparatorStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, prompt_width:][:, -tail:]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            return torch.tensor(
                [separator in text for text in texts], dtype=torch.bool, device=input_ids.device
            )

    return SeparatorStop()


class HFStepPolicy:
    """One step at a time from a HF causal LM: batched `generate` stopping at the separator.

    A step continues from its prefix's KV cache (the state returned with the step before),
    so neither the prompt nor earlier steps are read again; `cache=False`, or a model with
    sliding-window attention, re-reads the prefix text instead (same tokens for the
    character tokenizer, possibly re-split for BPE)."""

    def __init__(
        self,
        model_path: str,
        batch_size: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_step_tokens: int = 48,
        trust_remote_code: bool = False,
        cache: bool = True,
        allow_pickle: bool = False,
    ):
        from tdrm_cli.generation import HFBackend

        self.backend = HFBackend(
            model_path,
            batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        self.tokenizer = self.backend.tokenizer
        self.meta = read_policy_meta(model_path)
        self.separator = self.meta.get("separator", DEFAULT_SEPARATOR)
        self.batch_size, self.temperature, self.top_p = batch_size, temperature, top_p
        self.max_step_tokens = max_step_tokens
        self.cache = cache and supports_prefix_cache(self.backend.model)
        self.cache_arg = cache_arg(self.backend.model)
        self.generate_kwargs: dict[str, Any] = {}
        """Extra `model.generate` arguments (bench/search_cost.py passes a logits processor)."""
        self._prompts: dict[str, str] = {}

    def text(self, question: str, steps: list[str]) -> str:
        """Prompt + the kept steps, each followed by the separator: where the next step starts."""
        if question not in self._prompts:
            self._prompts[question] = build_prompt(self.tokenizer, question, self.meta)
        return self._prompts[question] + "".join(step + self.separator for step in steps)

    def _row(self, prefix: Prefix) -> Cached:
        if self.cache and prefix.state is not None:
            return prefix.state
        text = self.text(prefix.question, prefix.steps)
        bos = self.tokenizer.bos_token  # chat templates write their own BOS
        encoded = self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))
        return Cached(list(encoded["input_ids"]))

    def next_steps(self, prefixes: Sequence[Prefix], n: int, seed: int) -> list[list[Step]]:
        import torch

        rows = [self._row(p) for p in prefixes]
        flat = [i for i in range(len(rows)) for _ in range(n)]
        # Similar lengths share a batch: less padding.
        order = sorted(range(len(flat)), key=lambda j: len(rows[flat[j]].ids))
        out: list[Step | None] = [None] * len(flat)
        sampling = (
            dict(do_sample=False)
            if self.temperature <= 0
            else dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        )
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = make_batch(
                [rows[flat[j]] for j in chunk],
                self.tokenizer.pad_token_id,
                self.backend.device,
                room=self.max_step_tokens,
            )
            width = batch.width_cached + batch.width_new
            torch.manual_seed(seed * 1_000_003 + start)
            with torch.inference_mode():
                generated = self.backend.model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=self.max_step_tokens,
                    eos_token_id=self.backend.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    return_dict_in_generate=True,
                    stopping_criteria=[separator_stop(self.tokenizer, self.separator, width)],
                    **{self.cache_arg: batch.cache},
                    **sampling,
                    **self.generate_kwargs,
                )
            cache = getattr(generated, "cache", None) or getattr(generated, "past_key_values", None)
            for k, (j, ids) in enumerate(
                zip(chunk, generated.sequences[:, width:].tolist(), strict=True)
            ):
                step, kept = self._step(ids)
                if self.cache and step.stop == "separator":  # only such steps are continued
                    step.state = row_cached(batch, cache, k, kept, len(kept) - 1)
                out[j] = step
        return [out[i : i + n] for i in range(0, len(out), n)]

    def _step(self, ids: list[int]) -> tuple[Step, list[int]]:
        """The step a row of generated ids holds, and the ids it consists of."""
        ends = set(self.backend.stop_ids) | {
            self.tokenizer.pad_token_id
        }  # rows stopped early are padded
        stop = next((i for i, token in enumerate(ids) if token in ends), None)
        kept = ids if stop is None else ids[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        if self.separator in text:
            return Step(text[: text.index(self.separator)], len(kept), "separator"), kept
        if stop is not None and ids[stop] in self.backend.stop_ids:
            return Step(text, len(kept) + 1, "eos"), kept
        return Step(text, len(kept), "length"), kept


# ---------------------------------------------------------------- the search tree


@dataclass
class Node:
    problem: int
    tree: int
    steps: list[str]
    step_scores: list[float]
    tokens: int = 0
    """Generated tokens along this path."""
    ended: str | None = None
    """Why the solution is finished: eos, answer, step-length, token-budget, depth; None while open."""
    policy_state: Any = None
    prm_state: Any = None


@dataclass
class SearchResult:
    finished: list[Node]
    tokens: list[int]
    """Generated tokens per problem, every expansion counted (the compute spent)."""
    depth: int = 0
    """Step iterations run (the most any chunk of problems needed)."""
    generate_s: float = 0.0
    score_s: float = 0.0


def _seed(seed: int, *parts: Any) -> int:
    return int.from_bytes(
        hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()[:4], "little"
    )


def extend(parent: Node, step: Step, depth: int, task: Task, cfg: SearchConfig) -> Node | None:
    """The child prefix a generated step makes (None: an empty step that is not an ending)."""
    text = step.text.strip()
    tokens = parent.tokens + step.num_tokens
    if not text:
        if step.stop == "separator":
            return None
        return Node(parent.problem, parent.tree, parent.steps, parent.step_scores, tokens, "eos")
    child = Node(
        parent.problem,
        parent.tree,
        [*parent.steps, text],
        parent.step_scores,
        tokens,
        policy_state=step.state,
        prm_state=parent.prm_state,
    )
    if step.stop == "eos":
        child.ended = "eos"
    elif step.stop == "length":
        child.ended = "step-length"
    elif task.extract_answer([text]) is not None:
        child.ended = "answer"
    elif tokens >= cfg.max_new_tokens:
        child.ended = "token-budget"
    elif depth + 1 >= cfg.max_depth:
        child.ended = "depth"
    return child


def keep_best(children: list[Node], finished: list[Node], keep: int, agg: str) -> list[Node]:
    """Per (problem, tree): the best-scored open prefixes, as many as its unfinished slots."""
    used: dict[tuple[int, int], int] = {}
    for node in finished:
        used[node.problem, node.tree] = used.get((node.problem, node.tree), 0) + 1
    groups: dict[tuple[int, int], list[Node]] = {}
    for node in children:
        groups.setdefault((node.problem, node.tree), []).append(node)
    kept = []
    for key, nodes in groups.items():
        ranked = sorted(
            nodes, key=lambda node: -aggregate(node.step_scores, agg)
        )  # stable: ties keep order
        kept += ranked[: max(keep - used.get(key, 0), 0)]
    return kept


def grow(
    problems: range,
    questions: list[str],
    policy: StepPolicy,
    scorer: StepScorer,
    task: Task,
    cfg: SearchConfig,
    trees: int,
    keep: int,
    seed: int,
    result: SearchResult,
) -> None:
    """Search `problems` to the end, adding their finished solutions and tokens to `result`."""
    frontier = [Node(p, t, [], []) for p in problems for t in range(trees)]
    finished: list[Node] = []
    for depth in range(cfg.max_depth):
        if not frontier:
            break
        result.depth = max(result.depth, depth + 1)
        # The root stands for all `keep` slots of its tree, so it gets their expansions.
        n = cfg.expand * (keep if depth == 0 else 1)
        start = time.perf_counter()
        prefixes = [
            Prefix(questions[node.problem], node.steps, node.policy_state) for node in frontier
        ]
        steps = policy.next_steps(prefixes, n, _seed(seed, problems.start, depth))
        result.generate_s += time.perf_counter() - start
        children, seen = [], {(node.problem, node.tree, tuple(node.steps)) for node in finished}
        for parent, options in zip(frontier, steps, strict=True):
            for step in options:
                result.tokens[parent.problem] += step.num_tokens
                child = extend(parent, step, depth, task, cfg)
                key = None if child is None else (child.problem, child.tree, tuple(child.steps))
                if (
                    key is not None and key not in seen
                ):  # a prefix sampled twice is one state, kept once
                    seen.add(key)
                    children.append(child)
        start = time.perf_counter()
        new = [c for c in children if len(c.steps) > len(c.step_scores)]
        scored = scorer.score_last(
            [Prefix(questions[c.problem], c.steps, c.prm_state) for c in new]
        )
        for child, (value, state) in zip(new, scored, strict=True):
            child.step_scores, child.prm_state = [*child.step_scores, value], state
        result.score_s += time.perf_counter() - start
        for child in children:
            if child.ended:
                child.policy_state = child.prm_state = (
                    None  # a finished solution is never continued
                )
                finished.append(child)
        frontier = keep_best([c for c in children if not c.ended], finished, keep, cfg.agg)
    result.finished += finished


def tree_search(
    questions: list[str],
    policy: StepPolicy,
    scorer: StepScorer,
    task: Task,
    cfg: SearchConfig,
    trees: int,
    keep: int,
    seed: int,
) -> SearchResult:
    """Grow `trees` trees per problem, keeping `keep` open prefixes per tree at every depth.

    Problems are searched in chunks of about 8 batches of sequences per step, which bounds
    the memory the kept KV caches take; every problem's search is independent anyway."""
    result = SearchResult([], [0] * len(questions))
    chunk = max(1, 8 * getattr(cfg, "batch_size", 64) // (trees * keep * cfg.expand))
    for start in range(0, len(questions), chunk):
        grow(
            range(start, min(start + chunk, len(questions))),
            questions,
            policy,
            scorer,
            task,
            cfg,
            trees,
            keep,
            seed,
            result,
        )
    return result


def beam(questions, policy, scorer, task, cfg: SearchConfig, seed: int) -> SearchResult:
    return tree_search(
        questions, policy, scorer, task, cfg, trees=1, keep=cfg.beam_width, seed=seed
    )


def greedy(questions, policy, scorer, task, cfg: SearchConfig, seed: int) -> SearchResult:
    return tree_search(questions, policy, scorer, task, cfg, trees=1, keep=1, seed=seed)


def dvts(questions, policy, scorer, task, cfg: SearchConfig, seed: int) -> SearchResult:
    return tree_search(
        questions, policy, scorer, task, cfg, trees=cfg.beam_width, keep=1, seed=seed
    )


METHODS: dict[str, Callable[..., SearchResult]] = {"beam": beam, "greedy": greedy, "dvts": dvts}

# ---------------------------------------------------------------- answers and results


def solution_rows(
    result: SearchResult, problems: list[Problem], task: Task, method: str, prm: str, agg: str
) -> list[dict]:
    rows = []
    for node in result.finished:
        problem = problems[node.problem]
        answer, correct = grade(task, problem, node.steps)
        rows.append(
            {
                "method": method,
                "prm": prm,
                "problem_id": problem.id,
                "prompt": problem.question,
                "gold": problem.gold,
                "tree": node.tree,
                "steps": node.steps,
                "step_scores": node.step_scores,
                "score": aggregate(node.step_scores, agg),
                "answer": answer,
                "correct": correct,
                "tokens": node.tokens,
                "ended": node.ended,
            }
        )
    return rows


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


def write_scores(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("method", pa.string()),
            ("prm", pa.string()),
            ("problem_id", pa.string()),
            ("prompt", pa.string()),
            ("gold", pa.string()),
            ("tree", pa.int64()),
            ("steps", pa.list_(pa.string())),
            ("step_scores", pa.list_(pa.float64())),
            ("score", pa.float64()),
            ("answer", pa.string()),
            ("correct", pa.int64()),
            ("tokens", pa.int64()),
            ("ended", pa.string()),
        ]
    )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def print_table(results: list[dict], seconds: dict[str, float], problems: int, vote: str) -> None:
    table = Table(
        title=f"step-level search, {problems} problems",
        caption=f"acc: {vote} vote over the finished solutions; naive / weighted: those votes; "
        "oracle: any finished solution right; tokens: generated per problem; sols: finished per problem",
    )
    for column in ("method", "prm", "acc", "naive", "weighted", "oracle", "tokens", "sols", "s"):
        table.add_column(
            column, justify="left" if column in ("method", "prm") else "right", no_wrap=True
        )
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
            f"{seconds[r['method'] + '/' + r['prm']]:.0f}",
        )
    console.print(table)


def run(cfg: SearchConfig) -> Path:
    from tdrm_cli.stages.bon import prm_labels

    # Inputs are checked (and PRMs loaded) before a run folder exists: bad input leaves nothing behind.
    task = load_task(cfg.task)
    model_path, _ = resolve_model(cfg.policy, "policy")
    labels = prm_labels(cfg.prm)
    prms = [
        load_prm(
            path, "prm", trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle
        )
        for path in cfg.prm
    ]
    problems = task.problems(cfg.split, cfg.problems)
    questions = [p.question for p in problems]
    with run_stage("search", cfg) as run:
        run.add_input("policy", cfg.policy)
        for i, path in enumerate(cfg.prm):
            run.add_input(f"prm{i}", path)
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
        all_rows, results, seconds = [], [], {}
        for method in cfg.methods:
            for label, prm in zip(labels, prms, strict=True):
                start = time.perf_counter()
                with console.status(f"{method} search with {label} on {len(problems)} problems"):
                    result = METHODS[method](
                        questions,
                        policy,
                        make_scorer(prm, cfg.batch_size),
                        task,
                        cfg,
                        _seed(cfg.seed, method),
                    )
                seconds[f"{method}/{label}"] = round(time.perf_counter() - start, 1)
                rows = solution_rows(result, problems, task, method, label, cfg.agg)
                results.append(evaluate(rows, problems, result.tokens, method, label, cfg.vote))
                all_rows += rows
                log(
                    f"{method}/{label}: accuracy {results[-1]['accuracy']:.3f}, "
                    f"{results[-1]['tokens_per_problem']:.0f} tokens/problem, {result.depth} steps, "
                    f"{seconds[f'{method}/{label}']:.1f}s (generate {result.generate_s:.1f}s, score {result.score_s:.1f}s)"
                )
        write_scores(run.path / SCORES, all_rows)
        atomic_write_json(
            run.path / RESULTS,
            {
                "problems": len(problems),
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
            results, run.path / PLOT, f"step-level search on {len(problems)} problems ({cfg.task})"
        )
        metrics = {
            "accuracy": results[0]["accuracy"],
            "problems": len(problems),
            "seconds": seconds,
            "results": {f"{r['method']}/{r['prm']}": round(r["accuracy"], 4) for r in results},
        }
        run.complete(metrics)
        print_table(results, seconds, len(problems), cfg.vote)
    return run.path
