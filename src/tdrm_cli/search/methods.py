"""The search methods and the tree they all grow, one step at a time (search-and-learn style).

- `beam`: keep `--beam-width` prefixes per problem; expand each with `--expand` sampled
  next steps; the PRM scores every new step; keep the best prefixes.
- `greedy`: the same with one kept prefix.
- `dvts`: `--beam-width` independent subtrees per problem, each a greedy search (diverse
  verifier tree search), so one strong early step cannot take all the budget.

A prefix is finished when the model stops (EOS), states a final answer, or hits a
step/token/depth limit; finished prefixes are kept and take up one of their tree's slots;
a prefix sampled twice in a tree is kept once (search-and-learn's `filter_duplicates`).

`METHODS` is the registry `tdrm search --method` reads (config.py imports it), so this
module stays free of torch and of modules that import config.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tdrm_cli.voting import aggregate

if TYPE_CHECKING:
    from tdrm_cli.configs.sample import SearchConfig
    from tdrm_cli.tasks import Task

# ---------------------------------------------------------------- what policy and scorer see


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


def derive_seed(seed: int, *parts: Any) -> int:
    """A 32-bit seed for one part of the search (a method, a chunk and depth)."""
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


def new_children(
    frontier: list[Node],
    steps: list[list[Step]],
    finished: list[Node],
    depth: int,
    task: Task,
    cfg: SearchConfig,
    result: SearchResult,
) -> list[Node]:
    """The children the generated steps make, each prefix once per tree; counts the tokens."""
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
    return children


def score_new(children: list[Node], questions: list[str], scorer: StepScorer) -> None:
    """Score the last step of every child that has one more step than scores."""
    new = [c for c in children if len(c.steps) > len(c.step_scores)]
    scored = scorer.score_last([Prefix(questions[c.problem], c.steps, c.prm_state) for c in new])
    for child, (value, state) in zip(new, scored, strict=True):
        child.step_scores, child.prm_state = [*child.step_scores, value], state


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
        steps = policy.next_steps(prefixes, n, derive_seed(seed, problems.start, depth))
        result.generate_s += time.perf_counter() - start
        children = new_children(frontier, steps, finished, depth, task, cfg, result)
        start = time.perf_counter()
        score_new(children, questions, scorer)
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
        problems = range(start, min(start + chunk, len(questions)))
        grow(problems, questions, policy, scorer, task, cfg, trees, keep, seed, result)
    return result


# ---------------------------------------------------------------- the methods


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
