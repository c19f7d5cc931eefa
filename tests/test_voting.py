"""voting.py: votes on hand-worked examples (ties, answers of None), subsets, accuracy at N."""

from __future__ import annotations

import pytest

from tdrm_cli.voting import (
    accuracy_at_n,
    majority,
    naive,
    paired_bootstrap,
    powers_of_two,
    subset_indices,
    voted_correct,
    weighted,
)

# ---------------------------------------------------------------- votes


def test_naive_picks_the_best_score_first_on_ties():
    assert naive(["1", "2", "3"], [0.2, 0.9, 0.9]) == 1
    assert naive(["1", "2"], [0.5, 0.5]) == 0
    assert naive([], []) is None


def test_naive_can_pick_a_candidate_without_answer_which_counts_wrong():
    answers, scores, correct = [None, "2"], [0.9, 0.1], [0, 1]
    assert naive(answers, scores) == 0
    assert voted_correct("naive", answers, correct, scores) == 0


def test_weighted_sums_scores_per_answer():
    # "7": 0.9 vs "8": 0.4 + 0.4 = 0.8 -> the single confident "7" wins
    assert weighted(["7", "8", "8"], [0.9, 0.4, 0.4]) == 0
    # "8": 0.4 + 0.6 = 1.0 beats "7": 0.9; the pick is the first candidate saying "8"
    assert weighted(["7", "8", "8"], [0.9, 0.4, 0.6]) == 1


def test_weighted_ties_go_to_the_answer_seen_first_and_none_never_wins():
    # "1": 0.3 + 0.3 = 0.6 ties "2": 0.5 + 0.1 = 0.6 -> "1", seen first (index 1); None's 5.0 does not count
    assert weighted([None, "1", "2", "2", "1"], [5.0, 0.3, 0.5, 0.1, 0.3]) == 1
    assert weighted([None, "2", "1", "1", "2"], [5.0, 0.5, 0.3, 0.3, 0.1]) == 1  # now "2" is first
    assert weighted([None, None], [0.9, 0.8]) is None
    assert voted_correct("weighted", [None, None], [0, 0], [0.9, 0.8]) == 0


def test_majority_counts_answers_and_ignores_none():
    assert majority(["3", "4", "4", None, None, None]) == 1
    assert majority(["5", "6"]) == 0  # tie -> first seen
    assert majority(["6", "5", "5", "6"]) == 0
    assert majority([None]) is None
    assert voted_correct("majority", ["3", "4", "4"], [1, 0, 0], None) == 0


# ---------------------------------------------------------------- subsets and accuracy at N


def test_powers_of_two():
    assert powers_of_two(1) == [1]
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(12) == [1, 2, 4, 8, 12]


def test_subsets_are_seeded_sorted_and_without_replacement():
    a = subset_indices(16, 4, 50, 0, 0)
    assert a == subset_indices(16, 4, 50, 0, 0)
    assert a != subset_indices(16, 4, 50, 0, 1) and a != subset_indices(16, 4, 50, 1, 0)
    assert all(len(set(s)) == 4 and list(s) == sorted(s) and max(s) < 16 for s in a)
    assert subset_indices(4, 4, 2, 0, 3) == ((0, 1, 2, 3), (0, 1, 2, 3))


ANSWERS = [["1", "2"], ["3", "3"], [None, "5"]]
CORRECT = [[1, 0], [1, 1], [0, 1]]
SCORES = [[0.2, 0.8], [0.5, 0.5], [0.9, 0.3]]


def test_accuracy_at_full_n_is_exact():
    # naive: wrong (0.8 says "2"), right, wrong (the unanswered 0.9)
    assert accuracy_at_n(ANSWERS, CORRECT, SCORES, "naive", 2, 5, 0) == (pytest.approx(1 / 3), 0.0)
    # weighted: "2" 0.8 > "1" 0.2 wrong; right; None cannot win -> "5" right
    assert accuracy_at_n(ANSWERS, CORRECT, SCORES, "weighted", 2, 5, 0) == (
        pytest.approx(2 / 3),
        0.0,
    )
    # majority: tie "1"/"2" -> "1" right; right; "5" right
    assert accuracy_at_n(ANSWERS, CORRECT, None, "majority", 2, 5, 0) == (1.0, 0.0)
    assert accuracy_at_n(ANSWERS, CORRECT, None, None, 2, 5, 0) == (1.0, 0.0)


def test_at_n_1_every_vote_is_the_sampled_candidates_verdict():
    results = {
        vote: accuracy_at_n(ANSWERS, CORRECT, SCORES, vote, 1, 16, 3)
        for vote in ("naive", "weighted", "majority", None)
    }
    assert len(set(results.values())) == 1
    mean, std = results[None]
    # hand count from the same subsets: mean verdict of the one candidate drawn per problem
    per_trial = [
        sum(CORRECT[p][s[0]] for p, s in enumerate(subset_indices(2, 1, 3, 3, t))) / 3
        for t in range(16)
    ]
    assert mean == pytest.approx(sum(per_trial) / 16)
    assert std > 0  # the subsets differ, so the trials do


def loop_accuracy(answers, correct, scores, vote, n, trials, seed):
    """The reference: the pure vote functions, problem by problem, on the same subsets."""
    m = min(len(a) for a in answers)
    accs = []
    for trial in range(trials if n < m else 1):
        hits = 0
        for p, subset in enumerate(subset_indices(m, n, len(answers), seed, trial)):
            sub_correct = [correct[p][i] for i in subset]
            if vote is None:
                hits += any(sub_correct)
            else:
                sub_scores = None if scores is None else [scores[p][i] for i in subset]
                hits += voted_correct(
                    vote, [answers[p][i] for i in subset], sub_correct, sub_scores
                )
        accs.append(hits / len(answers))
    mean = sum(accs) / len(accs)
    return mean, (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5


def test_vectorized_accuracy_equals_the_pure_votes_with_many_ties():
    import random

    rng = random.Random(0)
    answers = [[rng.choice(["1", "2", "3", None]) for _ in range(16)] for _ in range(40)]
    correct = [[int(a == "2") for a in row] for row in answers]
    scores = [
        [rng.choice([0.1, 0.25, 0.5, 0.75]) for _ in range(16)] for _ in range(40)
    ]  # exact ties abound
    for vote in ("naive", "weighted", "majority", None):
        for n in (1, 2, 4, 8, 16):
            assert accuracy_at_n(answers, correct, scores, vote, n, 5, 7) == loop_accuracy(
                answers, correct, scores, vote, n, 5, 7
            )


def test_paired_bootstrap_interval_is_for_the_difference():
    import numpy as np

    # Identical methods: difference exactly 0, interval [0, 0].
    same = [1, 0, 1, 1, 0]
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    # a wins on 30 of 200 problems and never loses: mean 0.15, interval above 0 and around it.
    a = np.array([1] * 30 + [0] * 170)
    b = np.zeros(200)
    diff, low, high = paired_bootstrap(a, b, seed=1)
    assert diff == pytest.approx(0.15)
    assert 0.0 < low < 0.15 < high < 0.25
    # The standard error of a mean of 0/1 differences is sqrt(p(1-p)/n) = 0.0252: the
    # interval spans about 2 x 1.96 of it.
    assert high - low == pytest.approx(2 * 1.96 * (0.15 * 0.85 / 200) ** 0.5, rel=0.15)
    # Paired: two methods right on the same problems have a zero-width interval even though
    # each accuracy alone is uncertain.
    assert paired_bootstrap(a, a.copy()) == (0.0, 0.0, 0.0)
