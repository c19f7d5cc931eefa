"""rewards.py: the verifier and PRM reward callables on hand-made completions."""

from __future__ import annotations

import pytest

from tdrm_cli.rewards import OnlinePRMUpdate, PRMReward, VerifierReward, completion_text
from tdrm_cli.stages.rl import REWARD_MIXES
from tdrm_cli.targets import Targets
from tdrm_cli.tasks.arith import ArithTask
from tdrm_cli.voting import aggregate

TASK = ArithTask(ops=2)


def columns(problem, k: int) -> dict[str, list[str]]:
    """The dataset columns GRPOTrainer repeats for each of k completions of one problem."""
    return {
        "question": [problem.question] * k,
        "gold": [problem.gold] * k,
        "problem_id": [problem.id] * k,
    }


@pytest.fixture(scope="module")
def problem():
    return TASK.problems("train", 1)[0]


def test_verifier_reward_scores_final_answer(problem):
    steps = TASK.reference_steps(problem)
    right = "\n\n".join(steps)
    wrong = "\n\n".join([*steps[:-1], f"answer {int(problem.gold) + 1}"])
    no_answer = "\n\n".join(steps[:-1])
    completions = [right, wrong, no_answer, "", f"answer {problem.gold}"]
    seen = []
    reward = VerifierReward(
        TASK, observer=lambda q, texts, verdicts: seen.append((q, texts, verdicts))
    )
    out = reward(
        prompts=["p"] * 5,
        completions=completions,
        completion_ids=None,
        trainer_state=None,
        **columns(problem, 5),
    )
    assert out == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert seen == [([problem.question] * 5, completions, out)]
    assert reward.__name__ == "verifier"


def test_verifier_reward_reads_conversational_completions(problem):
    completion = [{"role": "assistant", "content": "\n\n".join(TASK.reference_steps(problem))}]
    assert completion_text(completion).endswith(f"answer {problem.gold}")
    assert VerifierReward(TASK)(prompts=["p"], completions=[completion], **columns(problem, 1)) == [
        1.0
    ]


class RecordingPRM:
    """A fake PRM: step value = 0.9 for steps with '=', 0.2 otherwise; records every call."""

    separator = "\n\n"
    agg = "min"

    def __init__(self):
        self.calls = []

    def score(self, problems, solutions):
        self.calls.append((list(problems), [list(s) for s in solutions]))
        return [[0.9 if "=" in step else 0.2 for step in steps] for steps in solutions]


@pytest.mark.parametrize("agg", ["min", "last", "prod", "mean"])
def test_prm_reward_splits_steps_and_scores_once(problem, agg):
    prm = RecordingPRM()
    completions = [
        "1+2=3\n\n3+4=7\n\nanswer 7",
        "  junk \n\n\n\n answer 5 ",
        "",
        "1+2=3\n\n3+4=7\n\nanswer 7 ",
    ]
    out = PRMReward(prm, agg)(prompts=["p"] * 4, completions=completions, **columns(problem, 4))
    # one call for the whole batch; the repeated solution and the empty one are not scored again
    assert prm.calls == [
        ([problem.question] * 2, [["1+2=3", "3+4=7", "answer 7"], ["junk", "answer 5"]])
    ]
    values = [[0.9, 0.9, 0.2], [0.2, 0.2], [], [0.9, 0.9, 0.2]]
    assert out == pytest.approx([aggregate(v, agg) for v in values])
    assert out[2] == 0.0  # no steps, no credit


def test_prm_reward_scores_the_same_steps_separately_per_question(problem):
    prm = RecordingPRM()
    other = TASK.problems("train", 2)[1]
    cols = {"question": [problem.question, other.question], "gold": [problem.gold, other.gold]}
    PRMReward(prm)(prompts=["p", "q"], completions=["answer 3", "answer 3"], **cols)
    assert prm.calls == [([problem.question, other.question], [["answer 3"], ["answer 3"]])]


def test_prm_reward_defaults_to_the_prms_aggregation_and_has_its_own_name():
    reward = PRMReward(RecordingPRM())
    assert reward.agg == "min" and reward.__name__ == "prm" != VerifierReward(TASK).__name__
    with pytest.raises(Exception, match="--agg"):
        PRMReward(RecordingPRM(), "median")


def test_prm_reward_with_a_real_prm_matches_its_step_scores(tmp_path, problem):
    from test_prm import make_tiny_base, prm_from_base

    prm = prm_from_base(make_tiny_base(tmp_path / "base"), agg="last")
    steps = TASK.reference_steps(problem)
    completions = ["\n\n".join(steps), "\n\n".join(steps[:1])]
    out = PRMReward(prm)(prompts=["p"] * 2, completions=completions, **columns(problem, 2))
    expected = [v[-1] for v in prm.score([problem.question] * 2, [steps, steps[:1]])]
    assert out == pytest.approx(expected, abs=1e-6)
    assert all(0.0 < v < 1.0 for v in out)


def test_reward_mixes_give_grpo_weights():
    assert REWARD_MIXES["prm+rlvr"](0.2) == [("prm", 0.2), ("verifier", 0.8)]
    assert REWARD_MIXES["rlvr"](0.2) == [("verifier", 1.0)]
    assert REWARD_MIXES["prm"](0.2) == [("prm", 1.0), ("verifier", 0.0)]  # verifier only logged


def test_online_update_pulls_step_values_toward_the_verdicts(tmp_path):
    from test_prm import make_tiny_base, prm_from_base

    prm = prm_from_base(make_tiny_base(tmp_path / "base"))
    problems = TASK.problems("train", 8)
    texts = ["\n\n".join(TASK.reference_steps(p)) for p in problems]
    learner = OnlinePRMUpdate(
        prm, every=1, learning_rate=3e-3, batch_size=4, targets=Targets("td", 1.0, 0.8)
    )

    def mean_value(verdict: float) -> float:
        learner.observe([p.question for p in problems], texts, [verdict] * len(problems))
        rollouts, learner.buffer = learner.buffer, []
        assert rollouts[0] == (problems[0].question, TASK.reference_steps(problems[0]), verdict)
        first = learner.update(rollouts, seed=0)
        for seed in range(1, 8):
            last = learner.update(rollouts, seed)
        assert first["gradient_steps"] == 2 and last["loss"] < first["loss"]
        values = prm.score(
            [p.question for p in problems], [TASK.reference_steps(p) for p in problems]
        )
        return sum(map(sum, values)) / sum(map(len, values))

    assert mean_value(1.0) > 0.75  # every step's TD(lambda) target is 1 when all rollouts succeed
    assert mean_value(0.0) < 0.35  # ... and toward 0 when they all fail
    assert not prm.model.training  # back to scoring mode


def test_online_update_ranks_verified_rollouts_above_failed_ones(tiny_policy):
    """Mixed verdicts in one buffer: the same questions, answered with a number (verified)
    or with 'x' (failed). The failed answer is easy to tell apart on purpose: this checks
    that the update follows each rollout's own verdict (a constant or verdict-blind update
    pulls both to the same value), not that a tiny backbone can verify arithmetic."""
    from test_prm import prm_from_base

    prm = prm_from_base(tiny_policy / "model")
    problems = TASK.problems("train", 8)
    right = [TASK.reference_steps(p) for p in problems]
    wrong = [[*s[:-1], "answer x"] for s in right]
    questions = [p.question for p in problems]
    learner = OnlinePRMUpdate(
        prm, every=1, learning_rate=3e-3, batch_size=4, targets=Targets("td", 1.0, 0.8)
    )
    learner.observe(questions * 2, ["\n\n".join(s) for s in right + wrong], [1.0] * 8 + [0.0] * 8)
    rollouts, learner.buffer = learner.buffer, []

    def gaps() -> list[float]:
        values = prm.score(questions * 2, right + wrong)
        return [a[-1] - b[-1] for a, b in zip(values[:8], values[8:], strict=True)]

    before = gaps()
    for seed in range(12):
        learner.update(rollouts, seed)
    after = gaps()
    assert all(g > 0 for g in after), after  # every verified solution above its failed twin
    assert sum(after) / len(after) > 0.1 > max(abs(b) for b in before), (after, before)
