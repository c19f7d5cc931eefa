"""step_rewards.py: the `--step-reward` sources in the TD targets (hand-worked), their options,
train-prm and rl end to end; and TDRM's reference PRM reward (`rl --prm-reward`)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import invoke, one_line_error
from tdrm_cli import prm_trainer, rewards, td
from tdrm_cli.configs.train import RLConfig, TrainPRMConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.prm import Encoded
from tdrm_cli.rewards import PRM_REWARDS, ReferencePRMReward, VerifierReward, value_logit
from tdrm_cli.stages.rl import reward_functions
from tdrm_cli.step_rewards import (
    ONLINE_STEP_REWARDS,
    PRM_REWARD_HELP,
    STEP_REWARDS,
    StepRewards,
    cosine_shaped,
)
from tdrm_cli.targets import Targets
from tdrm_cli.tasks.arith import ArithTask

GAMMA, LAM = 0.9, 0.5

# Row 0: 3 steps, correct; row 1: 2 steps (one padded position), wrong.
VALUES = [[0.5, 0.6, 0.7], [0.4, 0.3, 0.0]]
LABELS = [[0.2, 0.4, 0.8], [0.5, 0.3]]


def batch():
    features = [
        prm_trainer.step_features(Encoded([1, 5, 6, 7], [1, 2, 3], 1), 1.0, LABELS[0]),
        prm_trainer.step_features(Encoded([1, 5, 6], [1, 2], 1), 0.0, LABELS[1]),
    ]
    return prm_trainer.StepCollator(pad_id=0)(features)


def spec(source: str, n_step=None, **options) -> Targets:
    cfg = TrainPRMConfig(data="d", step_reward=source, **options)
    return Targets("td", GAMMA, LAM, n_step, step_rewards=StepRewards.from_config(cfg))


def targets(source: str, n_step=None, **options) -> list[float]:
    """The [2, 3] targets, flattened row by row."""
    y = spec(source, n_step, **options)(torch.tensor(VALUES), batch())
    return y.flatten().tolist()


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


# Hand-worked targets, gamma 0.9, lambda 0.5 (TD(lambda)) or n = 2, with
#   TD(lambda): G_L = R, G_t = r_t + 0.9 (0.5 V_{t+1} + 0.5 G_{t+1})
#   2-step:     y_t = rho_t + 0.9 rho_{t+1} + 0.81 V_{t+2} [t+2 <= L], rho_t = r_t (t < L), R (t = L)
EXPECTED = [
    # none: r = 0, R = verdict.
    # TD(lambda) row 0: G2 = 1; G1 = 0.9 (0.35 + 0.5) = 0.765; G0 = 0.9 (0.3 + 0.3825) = 0.61425
    #            row 1: G1 = 0; G0 = 0.9 (0.15 + 0) = 0.135
    # 2-step row 0: y0 = 0.81 * 0.7 = 0.567; y1 = 0.9 * 1 = 0.9; y2 = 1;  row 1: y0 = 0, y1 = 0
    ("none", {}, [[0.61425, 0.765, 1.0], [0.135, 0.0, 0.0]], [[0.567, 0.9, 1.0], [0.0, 0.0, 0.0]]),
    # length, cost 0.05: r_t = -0.05 (t < L).
    # TD(lambda) row 0: G1 = -0.05 + 0.765 = 0.715; G0 = -0.05 + 0.9 (0.3 + 0.3575) = 0.54175
    #            row 1: G0 = -0.05 + 0.135 = 0.085
    # 2-step row 0: y0 = -0.05 - 0.045 + 0.567 = 0.472; y1 = -0.05 + 0.9 = 0.85
    #        row 1: y0 = -0.05 + 0.9 * 0 = -0.05, clamped to 0
    (
        "length",
        {"step_cost": 0.05},
        [[0.54175, 0.715, 1.0], [0.085, 0.0, 0.0]],
        [[0.472, 0.85, 1.0], [0.0, 0.0, 0.0]],
    ),
    # labels, scale 0.1: r_t = 0.1 x label of step t+1: row 0 r0 = 0.04, r1 = 0.08; row 1 r0 = 0.03.
    # TD(lambda) row 0: G1 = 0.08 + 0.765 = 0.845; G0 = 0.04 + 0.9 (0.3 + 0.4225) = 0.69025
    #            row 1: G0 = 0.03 + 0.135 = 0.165
    # 2-step row 0: y0 = 0.04 + 0.072 + 0.567 = 0.679; y1 = 0.08 + 0.9 = 0.98;  row 1: y0 = 0.03
    (
        "labels",
        {"label_reward_scale": 0.1},
        [[0.69025, 0.845, 1.0], [0.165, 0.0, 0.0]],
        [[0.679, 0.98, 1.0], [0.03, 0.0, 0.0]],
    ),
    # shaping, L_max 4, correct 1 -> 0.5, wrong 0 -> 0.2:
    #   row 0 (3 steps, correct): R = 0.5 + 0.25 (1 + cos(3 pi / 4)) = 0.5 + 0.25 * 0.2928932 = 0.5732233
    #   row 1 (2 steps, wrong):   R = 0.2 - 0.1 (1 + cos(pi / 2)) = 0.1
    # TD(lambda) row 0: G2 = 0.5732233; G1 = 0.9 (0.35 + 0.2866117) = 0.5729505;
    #                   G0 = 0.9 (0.3 + 0.2864752) = 0.5278277
    #            row 1: G1 = 0.1; G0 = 0.9 (0.15 + 0.05) = 0.18
    # 2-step row 0: y0 = 0.567; y1 = 0.9 * 0.5732233 = 0.5159010; y2 = 0.5732233
    #        row 1: y0 = 0.9 * 0.1 = 0.09; y1 = 0.1
    (
        "shaping",
        {
            "shaping_max_steps": 4,
            "shaping_correct_start": 1.0,
            "shaping_correct_end": 0.5,
            "shaping_wrong_start": 0.0,
            "shaping_wrong_end": 0.2,
        },
        [[0.5278277, 0.5729505, 0.5732233], [0.18, 0.1, 0.0]],
        [[0.567, 0.5159010, 0.5732233], [0.09, 0.1, 0.0]],
    ),
]


@pytest.mark.parametrize(
    "source, options, lam_expected, nstep_expected", EXPECTED, ids=[k[0] for k in EXPECTED]
)
def test_each_source_gives_the_hand_worked_targets(source, options, lam_expected, nstep_expected):
    assert targets(source, **options) == pytest.approx(flat(lam_expected), abs=1e-6)
    assert targets(source, n_step=2, **options) == pytest.approx(flat(nstep_expected), abs=1e-6)


def test_every_source_has_a_hand_worked_case():
    assert {case[0] for case in EXPECTED} == set(STEP_REWARDS)


@pytest.mark.parametrize("n_step", [None, 1, 2, 5])
def test_none_is_the_target_of_before_bit_for_bit(n_step):
    values, b = torch.rand(2, 3), batch()
    assert StepRewards.from_config(TrainPRMConfig(data="d")) is None
    plain = Targets.from_config(TrainPRMConfig(data="d", gamma=GAMMA, td_lambda=LAM, n_step=n_step))
    if n_step is None:
        before = td.td_lambda_targets(values, None, b["terminal"], b["step_mask"], GAMMA, LAM)
    else:
        before = td.nstep_targets(values, None, b["terminal"], b["step_mask"], n_step, GAMMA)
    assert torch.equal(plain(values, b), before)
    assert plain.label() in ("TD(lambda=0.5)", f"n-step n={n_step}")


def test_cosine_shaping_ends_and_exceed():
    cfg = TrainPRMConfig(data="d", shaping_max_steps=4, shaping_exceed=0.05)
    assert cosine_shaped(0, True, cfg) == pytest.approx(cfg.shaping_correct_start)
    assert cosine_shaped(2, True, cfg) == pytest.approx(0.75)  # 0.5 + 0.25 * (1 + cos(pi/2))
    assert cosine_shaped(0, False, cfg) == pytest.approx(cfg.shaping_wrong_start)
    assert cosine_shaped(4, True, cfg) == cosine_shaped(9, False, cfg) == 0.05  # L >= L_max


def test_labels_source_refuses_a_batch_without_labels():
    features = [prm_trainer.step_features(Encoded([1, 5, 6], [1, 2], 1), 1.0)]
    with pytest.raises(ValueError, match="without step_labels"):
        spec("labels")(torch.zeros(1, 2), prm_trainer.StepCollator(pad_id=0)(features))


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--step-reward", "bogus"], "error: --step-reward bogus: expected none, shaping, labels or length"),
        (["--step-reward", "shaping", "--loss", "mc"], "error: --step-reward shaping needs --loss td (got --loss mc)"),
        (["--step-cost", "-1"], "error: --step-cost -1.0: must be >= 0"),
        (["--shaping-max-steps", "0"], "error: --shaping-max-steps must be >= 1"),
        (["--shaping-exceed", "nan"], "nan"),
    ],
)  # fmt: skip
def test_train_prm_refuses_bad_step_reward_options(flags, message, tmp_path):
    line = one_line_error(invoke("train-prm", "--data", "d", *flags, "--out", tmp_path / "r"))
    assert line == message or (message == "nan" and "shaping-exceed" in line), line


def test_rl_refuses_labels_online_and_step_rewards_without_online(tmp_path):
    base = ("rl", "--policy", "p", "--prm", "q", "--out", tmp_path / "r")
    one_line_error(
        invoke(*base, "--prm-update", "online", "--step-reward", "labels"),
        "--step-reward labels: reads Monte-Carlo step labels, which online rollouts lack",
        "expected none, shaping or length",
    )
    one_line_error(
        invoke(*base, "--step-reward", "length"),
        "--step-reward length needs --prm-update online or --advantage td",
    )
    assert RLConfig(policy="p", prm="q", advantage="td", step_reward="length")
    assert ONLINE_STEP_REWARDS == ("none", "shaping", "length")
    assert RLConfig(policy="p", prm="q", prm_update="online", step_reward="shaping")


def test_train_prm_labels_need_step_labels_in_every_row(tiny_base_data, tmp_path):
    from test_train_prm import rewrite_rollouts

    base, run = tiny_base_data
    path = rewrite_rollouts(run, step_labels=(1, None))
    line = one_line_error(
        invoke("train-prm", "--data", run, "--step-reward", "labels", "--out", tmp_path / "r")
    )
    assert line.startswith(f"error: {path}: row 1 (problem ")
    assert line.endswith("field 'step_labels' is empty, but --step-reward labels needs it")
    rewrite_rollouts(run, step_labels=None)
    line = one_line_error(
        invoke("train-prm", "--data", run, "--step-reward", "labels", "--out", tmp_path / "r")
    )
    assert line == (
        f"error: {path}: no step_labels (collect with --mc-rollouts > 0), "
        "but --step-reward labels needs them"
    )


# ---------------------------------------------------------------- end to end


@pytest.fixture
def tiny_base_data(tmp_path):
    from test_prm import make_tiny_base
    from test_train_prm import make_collect_run

    base = make_tiny_base(tmp_path / "base")
    return base, make_collect_run(tmp_path / "collect", base, problems=4, n=2)


def spy_on(monkeypatch, module) -> list:
    calls, real = [], prm_trainer.step_loss

    def spy(model, batch, head, targets, bootstrap=None):
        out = real(model, batch, head, targets, bootstrap)
        calls.append((batch, out))
        return out

    monkeypatch.setattr(module, "step_loss", spy)
    return calls


def test_train_prm_with_shaping_fits_the_shaped_outcome(tiny_base_data, tmp_path, monkeypatch):
    import json

    base, run = tiny_base_data
    calls = spy_on(monkeypatch, prm_trainer)
    out = tmp_path / "prm"
    result = invoke(
        "train-prm", "--data", run, "--base", base, "--max-steps", "2", "--batch-size", "4",
        "--report-to", "none", "--step-reward", "shaping", "--shaping-max-steps", "3",
        "--shaping-exceed", "0.25", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step reward shaping" in result.output
    cfg = TrainPRMConfig(data="d", shaping_max_steps=3, shaping_exceed=0.25)
    assert len(calls) >= 2
    for b, loss in calls:
        lengths = b["step_mask"].sum(dim=1).tolist()
        for row, (n, verdict) in enumerate(zip(lengths, b["terminal"].tolist(), strict=True)):
            # TD(lambda)'s last target is R itself: the shaped outcome, not the verdict
            shaped = cosine_shaped(int(n), verdict > 0.5, cfg)
            assert loss.targets[row, int(n) - 1].item() == pytest.approx(shaped, abs=1e-6)
    meta = json.loads((out / "model" / "tdrm_prm.json").read_text())
    assert meta["step_reward"] == "shaping"
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 2


def test_rl_online_update_uses_the_step_cost(tiny_policy, tmp_path, monkeypatch):
    from test_rl import TINY, make_prm_dir

    prm_dir = make_prm_dir(tmp_path / "prm", tiny_policy)
    calls = spy_on(monkeypatch, rewards)
    result = invoke(
        "rl", "--policy", tiny_policy, "--prm", prm_dir, *TINY, "--max-steps", "1",
        "--prm-update", "online", "--prm-update-every", "1", "--prm-batch-size", "8",
        "--eval-problems", "0", "--report-to", "none", "--step-reward", "length",
        "--step-cost", "0.2", "--td-lambda", "0", "--out", tmp_path / "rl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls
    for b, loss in calls:
        cfg = RLConfig(policy="p", prm="q", prm_update="online", step_reward="length", step_cost=0.2, td_lambda=0.0)  # fmt: skip
        expected = Targets.from_config(cfg)(loss.values.detach(), b)
        assert torch.equal(loss.targets, expected)
        # TD(0): y_t = clamp(-0.2 + V_{t+1}) inside a solution of two steps or more
        mask = b["step_mask"]
        v = loss.values.detach()
        inner = mask[:, 1:]
        assert torch.allclose(
            loss.targets[:, :-1][inner], (v[:, 1:] - 0.2).clamp(0, 1)[inner], atol=1e-6
        )


# ---------------------------------------------------------------- TDRM's reference PRM reward

TASK = ArithTask(ops=2)


class FakePRM:
    """Step value 0.9 for a step with '=', 0.2 otherwise; records what it scores."""

    separator = "\n\n"
    agg = "min"

    def __init__(self):
        self.calls = []

    def score(self, problems, solutions):
        self.calls.append([list(s) for s in solutions])
        return [[0.9 if "=" in step else 0.2 for step in steps] for steps in solutions]


def test_reference_prm_reward_drops_the_answer_step_and_gives_a_logit():
    prm = FakePRM()
    completions = [
        "1+2=3\n\n3+4=7\n\nanswer 7",  # answer step dropped: last kept "3+4=7" -> 0.9
        "1+2=3\n\njunk",  # no answer step: all kept, last "junk" -> 0.2
        "answer 7\n\n1+2=3",  # the first step answers: it alone is kept -> 0.2
        "1+2=3\n\nanswer 7\n\nanswer 8",  # everything from the first answer step on dropped
    ]
    cols = {"question": ["q"] * 4, "gold": ["7"] * 4, "problem_id": ["0"] * 4}
    out = ReferencePRMReward(prm, TASK)(prompts=["p"] * 4, completions=completions, **cols)
    assert prm.calls == [[["1+2=3", "3+4=7"], ["1+2=3", "junk"], ["answer 7"], ["1+2=3"]]]
    # logit(0.9) = ln(0.9 / 0.1) = ln 9 = 2.1972246; logit(0.2) = ln(0.25) = -1.3862944
    assert out == pytest.approx([2.1972246, -1.3862944, -1.3862944, 2.1972246], abs=1e-6)

    # rl --reward prm+rlvr with the default --prm-weight 0.2: GRPO weights [0.2, 0.8]
    cfg = RLConfig(policy="p", prm="q", prm_reward="tdrm-reference")
    funcs, weights = reward_functions(cfg, TASK, "\n\n", FakePRM())
    assert [f.__name__ for f in funcs] == ["prm", "verifier"] and weights == [0.2, 0.8]
    assert isinstance(funcs[0], ReferencePRMReward)
    verdicts = VerifierReward(TASK)(prompts=["p"] * 4, completions=completions, **cols)
    assert verdicts == [1.0, 0.0, 1.0, 0.0]  # arith grades the last stated answer ("answer 8")
    total = [0.2 * p + 0.8 * v for p, v in zip(out, verdicts, strict=True)]
    # 0.2 * 2.1972246 + 0.8 = 1.2394449; 0.2 * -1.3862944 = -0.2772589;
    # 0.2 * -1.3862944 + 0.8 = 0.5227411; 0.2 * 2.1972246 + 0 = 0.4394449
    assert total == pytest.approx([1.2394449, -0.2772589, 0.5227411, 0.4394449], abs=1e-6)


def test_value_logit_inverts_the_sigmoid_and_stays_finite():
    for logit in (-5.0, 0.0, 3.5):
        assert value_logit(1 / (1 + math.exp(-logit))) == pytest.approx(logit, abs=1e-9)
    assert math.isfinite(value_logit(1.0)) and math.isfinite(value_logit(0.0))


def test_prm_reward_registry_and_options_agree(tmp_path):
    assert set(PRM_REWARDS) == set(PRM_REWARD_HELP)
    assert RLConfig(policy="p", prm="q").prm_reward == "agg"
    with pytest.raises(UsageError, match="--agg needs --prm-reward agg"):
        RLConfig(policy="p", prm="q", prm_reward="tdrm-reference", agg="min")
    one_line_error(
        invoke("rl", "--policy", "p", "--prm", "q", "--prm-reward", "x", "--out", tmp_path / "r"),
        "--prm-reward x: expected agg or tdrm-reference",
    )
