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


def test_coupling_hand_rows():
    from tdrm_cli.metrics import coupling

    rows = [  # (verdict, step truth)
        (1, [1, 1, 1]),  # correct with every step right
        (1, [0, 1, 1]),  # correct, wrong at step 0: the answer did not come from the steps
        (0, [0, 0, 0]),
        (0, [1, 0, 1]),
        (1, [1, 0, 1]),
        (0, [1, 1, 1]),  # all steps right, answer cut off
        (0, []),  # no steps: wrong at step 0
        (1, None),  # no step truth: left out
    ]
    got = coupling([c for c, _ in rows], [t for _, t in rows])
    assert got == {
        "coupling": pytest.approx(1 / 3, abs=1e-4),
        "coupled_correct": 1,
        "correct_samples": 3,
        "p_correct_by_first_error": {"0": pytest.approx(1 / 3, abs=1e-4), "1": 0.5, "none": 0.5},
        "samples_by_first_error": {"0": 3, "1": 2, "none": 2},
    }
    # a gap in k is None; no correct sample gives coupling None; no truth at all gives None
    gap = coupling([0, 1], [[1, 1, 0], [1, 1]])
    assert gap["p_correct_by_first_error"] == {"0": None, "1": None, "2": 0.0, "none": 1.0}
    assert gap["coupling"] == 1.0 and gap["samples_by_first_error"]["1"] == 0
    assert coupling([0, 0], [[0], [1]])["coupling"] is None
    assert coupling([1], [None]) is None


def test_chance_auroc_se_is_hanley_mcneil_at_one_half():
    from tdrm_cli.metrics import chance_auroc_se

    n_pos, n_neg, a = 30, 70, 0.5
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (
        n_pos * n_neg
    )
    assert chance_auroc_se(n_pos, n_neg) == pytest.approx(hanley**0.5)
    assert chance_auroc_se(1, 1) == pytest.approx((3 / 12) ** 0.5)


def test_degenerate_flag_fires_on_a_constant_prm_and_not_on_a_good_one():
    import random

    from tdrm_cli.metrics import degeneracy

    rng = random.Random(0)
    truth = [[int(rng.random() < 0.6) for _ in range(4)] for _ in range(100)]
    verdict = [int(all(t)) for t in truth]

    def judge(values):
        step = ([v for row in values for v in row], [t for row in truth for t in row])
        outcome = ([min(row) for row in values], verdict)
        return degeneracy(values, step=step, outcome=outcome)

    constant = judge([[0.15] * 4 for _ in truth])
    assert constant["degenerate"] is True and constant["value_std"] == 0.0
    assert constant["degenerate_reasons"][0] == "value std 0.0000 < 0.01"
    assert any(r.startswith("step AUROC 0.500 within 2 SE") for r in constant["degenerate_reasons"])
    good = judge([[0.2 + 0.6 * t + 0.1 * rng.random() for t in row] for row in truth])
    assert good == {"value_std": good["value_std"], "degenerate": False, "degenerate_reasons": []}
    assert good["value_std"] > 0.2
    # values that vary but carry no information: only the AUROC rule catches it
    noise = judge([[rng.random() for _ in row] for row in truth])
    assert noise["degenerate"] is True and noise["value_std"] > 0.2
    assert all("AUROC" in r for r in noise["degenerate_reasons"])
    # a tiny spread that still ranks perfectly is degenerate by the std rule only
    tiny = judge([[0.5 + 0.001 * t for t in row] for row in truth])
    assert tiny["degenerate_reasons"] == [f"value std {tiny['value_std']:.4f} < 0.01"]
    assert degeneracy([])["degenerate"] is None
    # an undefined AUROC (one class) does not count either way
    assert degeneracy([[0.1, 0.9]], step=([0.1, 0.9], [1, 1]))["degenerate"] is False
