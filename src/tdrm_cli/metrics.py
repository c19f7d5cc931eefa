"""PRM and policy quality metrics as small pure functions on plain lists.

AUROC (ties count half), ProcessBench first-error identification, expected
calibration error, the smoothness of value trajectories, process–outcome coupling of
a policy's samples, and the rule that calls a PRM degenerate (learned nothing).
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
    solutions, and their harmonic mean F1. An accuracy is None when its class has no
    solution (F1 None too); F1 is 0 when both accuracies are 0 (the published script
    divides 0 by 0 there and prints nan)."""
    err = [p == g for p, g in zip(pred, gold, strict=True) if g >= 0]
    cor = [p == g for p, g in zip(pred, gold, strict=True) if g < 0]
    acc_err = sum(err) / len(err) if err else None
    acc_cor = sum(cor) / len(cor) if cor else None
    if acc_err is None or acc_cor is None:
        f1 = None
    else:
        f1 = 0.0 if acc_err + acc_cor == 0 else 2 * acc_err * acc_cor / (acc_err + acc_cor)
    return {"error_acc": acc_err, "correct_acc": acc_cor, "f1": f1}


PROCESSBENCH_THRESHOLD = 0.5
"""The published fixed threshold: a step scoring below it is the predicted first error."""
PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
"""The released subsets (the dataset's splits), in the paper's column order."""


def processbench_official(
    trajectories: Sequence[Sequence[float]],
    gold: Sequence[int],
    subsets: Sequence[str],
    threshold: float = PROCESSBENCH_THRESHOLD,
) -> dict:
    """ProcessBench as published (arXiv 2412.06559, QwenLM/ProcessBench `code/`): on every
    solution, the predicted first error is the first step scoring below `threshold` (-1 when
    none is); per subset, `processbench` accuracies and F1 over all its solutions (nothing is
    held out: the threshold is fixed, not fitted); `average_f1` is the unweighted mean of the
    subsets' F1 (the paper's "Avg."), None unless every subset has one. Subsets come in the
    paper's order, then any others in the order they first appear."""
    by_subset: dict[str, list[int]] = {}
    for i, name in enumerate(subsets):
        by_subset.setdefault(name, []).append(i)
    order = [s for s in PROCESSBENCH_SUBSETS if s in by_subset]
    order += [s for s in by_subset if s not in order]
    table = {}
    for name in order:
        idx = by_subset[name]
        pred = [first_error(trajectories[i], threshold) for i in idx]
        table[name] = {
            "solutions": len(idx),
            "erroneous": sum(1 for i in idx if gold[i] >= 0),
            **processbench(pred, [gold[i] for i in idx]),
        }
    f1s = [row["f1"] for row in table.values()]
    average = sum(f1s) / len(f1s) if f1s and None not in f1s else None
    return {"threshold": threshold, "subsets": table, "average_f1": average}


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


# ---------------------------------------------------------------- process–outcome coupling


def first_wrong_step(truth: Sequence[int]) -> int | None:
    """0-based index of the first wrong step, None when every step is right.

    A solution without steps counts as wrong at step 0: it never did a correct step."""
    if not truth:
        return 0
    return next((i for i, t in enumerate(truth) if not t), None)


def coupling(correct: Sequence[int], truths: Sequence[Sequence[int] | None]) -> dict | None:
    """How much a sample's verdict depends on its steps, from exact step truth.

    * `coupling`: the share of correct samples whose steps are all right (1.0: a right
      answer always comes from right steps; low: the answer is found without them);
    * `coupled_correct` / `correct_samples`: its numerator and denominator;
    * `p_correct_by_first_error`: P(correct | first wrong step at 0-based index k) for
      k = 0 .. the largest seen (None for a k no sample has), and "none" for samples
      with every step right; `samples_by_first_error`: how many samples each holds.

    Samples without step truth (None) are left out; None when no sample has it.
    """
    pairs = [(int(c), list(t)) for c, t in zip(correct, truths, strict=True) if t is not None]
    if not pairs:
        return None
    right = [c for c, t in pairs if c]
    coupled = sum(1 for c, t in pairs if c and t and all(t))
    by_k: dict[int | None, list[int]] = {}
    for c, t in pairs:
        by_k.setdefault(first_wrong_step(t), []).append(c)
    last = max((k for k in by_k if k is not None), default=-1)
    keys: list[int | None] = [*range(last + 1), None]
    name = {k: "none" if k is None else str(k) for k in keys}
    return {
        "coupling": round(coupled / len(right), 4) if right else None,
        "coupled_correct": coupled,
        "correct_samples": len(right),
        "p_correct_by_first_error": {
            name[k]: round(sum(by_k[k]) / len(by_k[k]), 4) if by_k.get(k) else None for k in keys
        },
        "samples_by_first_error": {name[k]: len(by_k.get(k, [])) for k in keys},
    }


# ---------------------------------------------------------------- degenerate PRMs

DEGENERATE_STD = 0.01  # held-out step values spread less than this: a constant
DEGENERATE_Z = 2.0  # an AUROC within this many null standard errors of 0.5 is chance


def chance_auroc_se(n_pos: int, n_neg: int) -> float:
    """Standard error of the AUROC of a scorer that knows nothing (true AUROC 0.5).

    Hanley & McNeil (1982) at A = 0.5 (Q1 = Q2 = 1/3), which equals the Mann-Whitney null
    variance: SE^2 = (n_pos + n_neg + 1) / (12 n_pos n_neg)."""
    return math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))


def near_chance(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float] | None:
    """(AUROC, null SE) when the AUROC is within `DEGENERATE_Z` null SEs of 0.5, else None.

    None too when the AUROC is undefined (one class only)."""
    value = auroc(scores, labels)
    if value is None:
        return None
    n_pos = sum(1 for y in labels if y)
    se = chance_auroc_se(n_pos, len(labels) - n_pos)
    return (value, se) if abs(value - 0.5) < DEGENERATE_Z * se else None


def degeneracy(
    values: Sequence[Sequence[float]],
    step: tuple[Sequence[float], Sequence[int]] | None = None,
    outcome: tuple[Sequence[float], Sequence[int]] | None = None,
) -> dict:
    """Did a PRM learn nothing beyond the base rate? One rule for train-prm and eval.

    `values` are its step values on held-out solutions; `step` = (step values, exact 0/1
    step truth) and `outcome` = (solution scores, 0/1 verdicts). Degenerate when the
    population std of all step values is below `DEGENERATE_STD`, or the step or outcome
    AUROC is within `DEGENERATE_Z` (2) null standard errors of 0.5 (`chance_auroc_se`).
    An undefined AUROC (one class only) does not count either way. Returns `value_std`,
    `degenerate` (None when there are no values) and `degenerate_reasons`.
    """
    flat = [float(v) for row in values for v in row]
    if not flat:
        return {"value_std": None, "degenerate": None, "degenerate_reasons": []}
    centre = sum(flat) / len(flat)
    std = math.sqrt(sum((v - centre) ** 2 for v in flat) / len(flat))
    reasons = []
    if std < DEGENERATE_STD:
        reasons.append(f"value std {std:.4f} < {DEGENERATE_STD}")
    for name, pair in (("step", step), ("outcome", outcome)):
        hit = near_chance(*pair) if pair is not None else None
        if hit is not None:
            reasons.append(
                f"{name} AUROC {hit[0]:.3f} within {DEGENERATE_Z:g} SE ({hit[1]:.3f}) of 0.5"
            )
    return {"value_std": round(std, 6), "degenerate": bool(reasons), "degenerate_reasons": reasons}
