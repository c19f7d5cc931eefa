"""Metrics against hand-computed examples."""

import pytest

from tdrm_cli.metrics import auroc, best_threshold, ece, first_error, processbench, smoothness


def test_auroc_hand_examples():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.9, 0.1], [1, 0]) == 1.0
    assert auroc([0.1, 0.9], [1, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5  # ties count half
    assert auroc([0.2, 0.3], [1, 1]) is None


def test_auroc_matches_pairwise_definition():
    import random

    rng = random.Random(0)
    scores = [round(rng.random(), 1) for _ in range(60)]
    labels = [int(rng.random() < 0.4) for _ in range(60)]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairwise = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(pairwise)


def test_processbench_first_error_and_f1():
    assert first_error([0.9, 0.8, 0.3, 0.9], 0.5) == 2
    assert first_error([0.9, 0.8], 0.5) == -1
    # two erroneous solutions (1 of 2 located), two correct ones (2 of 2 judged correct)
    result = processbench(pred=[2, 0, -1, -1], gold=[2, 1, -1, -1])
    assert result["error_acc"] == 0.5 and result["correct_acc"] == 1.0
    assert result["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert processbench([0], [0])["f1"] is None


def test_best_threshold_separates():
    trajectories = [[0.9, 0.2], [0.9, 0.9], [0.1, 0.1], [0.8, 0.7]]
    gold = [1, -1, 0, -1]
    t = best_threshold(trajectories, gold)
    assert 0.2 < t <= 0.7
    assert processbench([first_error(v, t) for v in trajectories], gold)["f1"] == 1.0


def test_ece_hand_example():
    # bin [0.8, 0.9): conf 0.85 acc 0.5 -> gap 0.35 with weight 1/2; bin [0.2,0.3): conf 0.2 acc 0 -> 0.2*1/2
    assert ece([0.8, 0.9 - 1e-9, 0.2, 0.2], [1, 0, 0, 0]) == pytest.approx(
        0.5 * 0.35 + 0.5 * 0.2, abs=1e-6
    )
    assert ece([1.0], [1]) == 0.0
    assert ece([], []) is None


def test_smoothness_hand_example():
    assert smoothness([[0.2, 0.6, 0.5], [0.9]]) == pytest.approx((0.4 + 0.1) / 2)
    assert smoothness([[0.2, 0.6, 0.5]], [[3, 4, 2]]) == pytest.approx((0.4 / 4 + 0.1 / 2) / 2)
    assert smoothness([[0.3]]) is None
