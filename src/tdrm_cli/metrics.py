"""PRM and policy quality metrics as small pure functions on plain lists.

AUROC (ties count half), ProcessBench first-error identification, expected
calibration error, and the smoothness of value trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a random positive outscores a random negative (None if one class)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    # Mann-Whitney U via average ranks: O(n log n), ties get the mean rank.
    ordered = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and scores[ordered[j + 1]] == scores[ordered[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[ordered[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def first_error(values: Sequence[float], threshold: float) -> int:
    """Index of the first step whose value is below `threshold`, or -1 when none is."""
    return next((i for i, v in enumerate(values) if v < threshold), -1)


def processbench(pred: Sequence[int], gold: Sequence[int]) -> dict[str, float | None]:
    """ProcessBench scoring: accuracy on erroneous (gold >= 0) and correct (gold == -1)
    solutions, and their harmonic mean F1."""
    err = [p == g for p, g in zip(pred, gold, strict=True) if g >= 0]
    cor = [p == g for p, g in zip(pred, gold, strict=True) if g < 0]
    acc_err = sum(err) / len(err) if err else None
    acc_cor = sum(cor) / len(cor) if cor else None
    if acc_err is None or acc_cor is None:
        f1 = None
    else:
        f1 = 0.0 if acc_err + acc_cor == 0 else 2 * acc_err * acc_cor / (acc_err + acc_cor)
    return {"error_acc": acc_err, "correct_acc": acc_cor, "f1": f1}


def best_threshold(
    trajectories: Sequence[Sequence[float]], gold: Sequence[int], grid: int = 99
) -> float:
    """The first-error threshold with the highest ProcessBench F1 (chosen on a held-out split)."""
    best, best_f1 = 0.5, -1.0
    for k in range(1, grid + 1):
        t = k / (grid + 1)
        f1 = processbench([first_error(v, t) for v in trajectories], gold)["f1"]
        if f1 is not None and f1 > best_f1:
            best, best_f1 = t, f1
    return best


def ece(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> float | None:
    """Expected calibration error with equal-width bins."""
    if not probs:
        return None
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(probs) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            conf = sum(probs[i] for i in idx) / len(idx)
            acc = sum(labels[i] for i in idx) / len(idx)
            total += len(idx) / len(probs) * abs(conf - acc)
    return total


def smoothness(
    trajectories: Sequence[Sequence[float]], step_tokens: Sequence[Sequence[int]] | None = None
) -> float | None:
    """Mean |V_{t+1} - V_t| / d over consecutive steps; d = 1, or the tokens of step t+1."""
    total, pairs = 0.0, 0
    for i, values in enumerate(trajectories):
        for t in range(len(values) - 1):
            d = 1 if step_tokens is None else max(int(step_tokens[i][t + 1]), 1)
            total += abs(values[t + 1] - values[t]) / d
            pairs += 1
    return total / pairs if pairs else None


def mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None
