"""Step-score aggregation, votes over candidate solutions and accuracy at N, as pure functions.

An aggregation (`AGGREGATIONS`: min, last, prod, mean) turns a solution's step scores
into one solution score (a solution without steps scores 0.0).

A vote looks at the candidates of one problem (their final answers, and for PRM votes
their solution scores) and picks one candidate, whose verdict becomes the problem's:

- `naive`: the best-scored candidate (best-of-N), whatever its answer.
- `weighted`: the answer with the largest sum of scores over the candidates giving it.
- `majority`: the answer given most often (no PRM).

Candidates without an answer (None) never win `weighted`/`majority` (they pick None
only when no candidate has an answer); `naive` can pick one, which then counts wrong.
Ties go to the candidate, or answer, that comes first in candidate order, so results
do not depend on dict or sort internals.

Accuracy at N < M (M candidates per problem) is the mean over `trials` random subsets
of N candidates drawn without replacement, with their std, as in search-and-learn.
Subset t of size N is `subset_indices(m, n, problems, seed, t)`; every vote and PRM
sees the same subsets, so comparisons between them are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tdrm_cli.errors import UsageError

# ---------------------------------------------------------------- step scores -> solution score


def _min(values: list[float]) -> float:
    return min(values)


def _last(values: list[float]) -> float:
    return values[-1]


def _prod(values: list[float]) -> float:
    return math.prod(values)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "min": _min,
    "last": _last,
    "prod": _prod,
    "mean": _mean,
}


def aggregate(values: Sequence[float], agg: str) -> float:
    """One solution score from its step scores; a solution without steps scores 0.0."""
    if agg not in AGGREGATIONS:
        raise UsageError(f"--agg {agg}: expected one of {', '.join(AGGREGATIONS)}")
    return float(AGGREGATIONS[agg](list(values))) if len(values) else 0.0


Answer = str | None
Vote = Callable[[Sequence[Answer], Sequence[float] | None], int | None]


def naive(answers: Sequence[Answer], scores: Sequence[float] | None) -> int | None:
    """Index of the best-scored candidate (first one on ties); None when there are none."""
    if not answers:
        return None
    best = 0
    for i in range(1, len(answers)):
        if scores[i] > scores[best]:
            best = i
    return best


def _best_answer(answers: Sequence[Answer], weights: Sequence[float]) -> int | None:
    """Index of the first candidate giving the answer with the largest total weight."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (answer, weight) in enumerate(zip(answers, weights, strict=True)):
        if answer is None:
            continue
        totals[answer] = totals.get(answer, 0.0) + weight
        first.setdefault(answer, i)
    best = None
    for answer in first:  # insertion order = candidate order, so a tie keeps the earlier answer
        if best is None or totals[answer] > totals[best]:
            best = answer
    return None if best is None else first[best]


def weighted(answers: Sequence[Answer], scores: Sequence[float] | None) -> int | None:
    return _best_answer(answers, scores)


def majority(answers: Sequence[Answer], scores: Sequence[float] | None = None) -> int | None:
    return _best_answer(answers, [1.0] * len(answers))


VOTES: dict[str, Vote] = {"naive": naive, "weighted": weighted, "majority": majority}
PRM_VOTES = tuple(name for name in VOTES if name != "majority")  # the votes that read scores


def voted_correct(
    vote: str, answers: Sequence[Answer], correct: Sequence[int], scores: Sequence[float] | None
) -> int:
    """1 when the candidate the vote picks is correct, else 0."""
    pick = VOTES[vote](answers, scores)
    return 0 if pick is None else int(correct[pick])


def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max, with n_max itself last when it is not a power of two."""
    ns = [1 << k for k in range(n_max.bit_length()) if 1 << k <= n_max]
    return ns if ns[-1] == n_max else [*ns, n_max]


@lru_cache(maxsize=256)
def subset_indices(
    m: int, n: int, problems: int, seed: int, trial: int
) -> tuple[tuple[int, ...], ...]:
    """Per problem, n of the m candidate indices without replacement, sorted (candidate order)."""
    import numpy as np

    if n >= m:
        return tuple(tuple(range(m)) for _ in range(problems))
    rng = np.random.default_rng([seed, n, trial])
    return tuple(tuple(sorted(rng.permutation(m)[:n].tolist())) for _ in range(problems))


def as_arrays(
    answers: Sequence[Sequence[Answer]],
    correct: Sequence[Sequence[int]],
    scores: Sequence[Sequence[float]] | None,
) -> dict[str, Any]:
    """`[problems, candidates]` arrays: answer ids (first-seen order, -1 for None), verdicts, scores."""
    import numpy as np

    m = min(len(a) for a in answers)
    ids = np.full((len(answers), m), -1, dtype=np.int64)
    for p, row in enumerate(answers):
        seen: dict[str, int] = {}
        for i, answer in enumerate(row[:m]):
            if answer is not None:
                ids[p, i] = seen.setdefault(answer, len(seen))
    return {
        "ids": ids,
        "correct": np.array([list(c[:m]) for c in correct], dtype=np.int64),
        "scores": None
        if scores is None
        else np.array([list(s[:m]) for s in scores], dtype=np.float64),
    }


def _vote_hits(arrays: dict[str, Any], vote: str | None, subset: Any) -> int:
    """Problems the vote gets right on one subset `[problems, n]`."""
    return int(vote_correct(arrays, vote, subset).sum())


def vote_correct(arrays: dict[str, Any], vote: str | None, subset: Any):
    """Per problem, whether the vote is right on one subset `[problems, n]` (bool array,
    vectorized over problems).

    Weighted totals are accumulated candidate by candidate in subset order, exactly like
    the loop in `_best_answer`, so exact ties (and their tie-break) come out the same."""
    import numpy as np

    correct = np.take_along_axis(arrays["correct"], subset, axis=1)
    if vote is None:
        return correct.any(axis=1)
    rows = np.arange(subset.shape[0])
    scores = (
        None if arrays["scores"] is None else np.take_along_axis(arrays["scores"], subset, axis=1)
    )
    if vote == "naive":
        return correct[rows, scores.argmax(axis=1)] > 0
    ids = np.take_along_axis(arrays["ids"], subset, axis=1)
    weights = np.ones(subset.shape, dtype=np.float64) if vote == "majority" else scores
    width = int(arrays["ids"].max(initial=-1)) + 1
    if width == 0:
        return np.zeros(subset.shape[0], dtype=bool)
    totals = np.zeros((subset.shape[0], width))
    first = np.full((subset.shape[0], width), subset.shape[1], dtype=np.int64)
    for j in range(subset.shape[1]):
        has, answer = ids[:, j] >= 0, ids[:, j].clip(min=0)
        totals[rows[has], answer[has]] += weights[has, j]
        first[rows[has], answer[has]] = np.minimum(first[rows[has], answer[has]], j)
    present = first < subset.shape[1]
    best_total = np.where(present, totals, -np.inf).max(axis=1, keepdims=True)
    winners = present & (totals == best_total)
    pick = np.where(winners, first, subset.shape[1]).min(
        axis=1
    )  # the tie goes to the answer seen first
    voted = pick < subset.shape[1]
    hit = np.zeros(subset.shape[0], dtype=bool)
    hit[rows[voted]] = correct[rows[voted], pick[voted]] > 0
    return hit


def accuracy_at_n(
    answers: Sequence[Sequence[Answer]] | dict[str, Any],
    correct: Sequence[Sequence[int]] | None,
    scores: Sequence[Sequence[float]] | None,
    vote: str | None,
    n: int,
    trials: int,
    seed: int,
) -> tuple[float, float]:
    """(mean, std) over subsets of the accuracy of `vote` on n candidates per problem.

    `vote=None` is pass@n (the oracle: some candidate in the subset is correct). `answers`
    may instead be `as_arrays(...)` of them (then `correct` and `scores` are ignored), to
    convert once for many curves.
    """
    import numpy as np

    arrays = answers if isinstance(answers, dict) else as_arrays(answers, correct, scores)
    problems, m = arrays["ids"].shape
    trials = 1 if n >= m else trials
    accuracies = []
    for trial in range(trials):
        subset = np.array(subset_indices(m, n, problems, seed, trial), dtype=np.int64).reshape(
            problems, -1
        )
        accuracies.append(_vote_hits(arrays, vote, subset) / problems)
    mean = sum(accuracies) / len(accuracies)
    std = (sum((a - mean) ** 2 for a in accuracies) / len(accuracies)) ** 0.5
    return mean, std


def paired_bootstrap(
    a: Any, b: Any, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of `a - b` over problems and its 95% percentile bootstrap interval.

    `a` and `b` are per-problem 0/1 outcomes of two methods on the same problems (and the
    same candidates), so problems are resampled in pairs: the interval is for the
    difference itself, not for two independent accuracies."""
    import numpy as np

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
