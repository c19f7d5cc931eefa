"""One loss for train-prm and `rl --prm-update online`: the target options, the registry."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import invoke, one_line_error
from tdrm_cli import prm_trainer, rewards
from tdrm_cli.config import field_help, listed
from tdrm_cli.configs.train import RLConfig, TrainPRMConfig
from tdrm_cli.prm import Encoded
from tdrm_cli.targets import ONLINE_LOSSES, TARGETS, Targets
from tdrm_cli.tasks.arith import ArithTask
from test_rl import TINY, make_prm_dir

TASK = ArithTask(ops=2)

# The same target options given to train-prm and to rl --prm-update online.
OPTIONS = {
    "td-lambda": {"td_lambda": 0.5},
    "n-step": {"n_step": 2, "gamma": 0.9},
    "td-mix": {"td_mix": 0.5},
}


def spy_on(monkeypatch, module) -> list:
    """Record `(batch, spec, StepLoss)` of every `step_loss` call made through `module`."""
    calls, real = [], prm_trainer.step_loss

    def spy(model, batch, head, targets, bootstrap=None):
        out = real(model, batch, head, targets, bootstrap)
        calls.append((batch, targets, out))
        return out

    monkeypatch.setattr(module, "step_loss", spy)
    return calls


@pytest.fixture(scope="module")
def prm_dir(tiny_policy, tmp_path_factory):
    return make_prm_dir(tmp_path_factory.mktemp("prm") / "prm", tiny_policy)


@pytest.mark.parametrize(
    "flags, field, value", [(("--n-step", "2"), "n_step", 2), (("--td-mix", "0.5"), "td_mix", 0.5)]
)
def test_rl_online_takes_the_target_options(
    tiny_policy, prm_dir, tmp_path, monkeypatch, flags, field, value
):
    calls = spy_on(monkeypatch, rewards)
    out = tmp_path / "rl"
    result = invoke(
        "rl", "--policy", tiny_policy, "--prm", prm_dir, *TINY, "--max-steps", "1",
        "--prm-update", "online", "--prm-update-every", "1", "--prm-batch-size", "8",
        "--eval-problems", "0", "--report-to", "none", *flags, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [u["step"] for u in metrics["prm_updates"]] == [1]
    assert calls and all(getattr(spec, field) == value for _, spec, _ in calls)
    assert f"{field}: {value}" in (out / "config.yaml").read_text()


def rollouts() -> list[tuple[str, list[str], float]]:
    """Reference solutions (verified) and the same with a wrong answer (failed)."""
    problems = TASK.problems("train", 4)
    right = [(p.question, TASK.reference_steps(p), 1.0) for p in problems]
    return right + [(q, [*s[:-1], "answer x"], 0.0) for q, s, _ in right]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_online_targets_equal_train_prm_targets_on_the_same_batch(name, tmp_path, monkeypatch):
    """The online update and PRMTrainer.compute_loss, on one batch with the same weights,
    fit the same targets and get the same loss."""
    import torch
    from transformers import TrainingArguments

    from test_prm import make_tiny_base, prm_from_base

    options = OPTIONS[name]
    rl_cfg = RLConfig(policy="p", prm="q", prm_update="online", **options)
    train_cfg = TrainPRMConfig(data="d", **options)
    prm = prm_from_base(make_tiny_base(tmp_path / "base"))
    before = copy.deepcopy(prm.model)
    online_calls = spy_on(monkeypatch, rewards)
    learner = rewards.OnlinePRMUpdate(
        prm, every=1, learning_rate=1e-3, batch_size=8, targets=Targets.from_config(rl_cfg)
    )
    learner.update(rollouts(), seed=0)
    [(batch, _, online)] = online_calls

    trainer_calls = spy_on(monkeypatch, prm_trainer)
    trainer = prm_trainer.PRMTrainer(
        model=before.train(),
        args=TrainingArguments(str(tmp_path / "t"), report_to="none", use_cpu=True),
        targets=Targets.from_config(train_cfg),
        head=prm.head,
    )
    loss = trainer.compute_loss(before, batch)
    [(_, _, offline)] = trainer_calls
    assert torch.equal(online.targets, offline.targets)
    assert loss.item() == online.loss.item()
    if name == "td-mix":  # online rollouts carry no MC labels: the mix is the TD target
        plain = Targets.from_config(TrainPRMConfig(data="d"))
        assert torch.equal(online.targets, plain(online.values.detach(), batch))


@pytest.mark.parametrize(
    "loss, needs", [("mc", "Monte-Carlo step labels"), ("truth", "step truth")]
)
def test_rl_online_refuses_targets_that_need_labels(loss, needs, tmp_path):
    result = invoke(
        "rl", "--policy", "p", "--prm", "q", "--prm-update", "online", "--loss", loss,
        "--out", tmp_path / "r",
    )  # fmt: skip
    line = one_line_error(result, f"--loss {loss}", needs, "online rollouts lack", "td or outcome")
    assert not (tmp_path / "r").exists(), line


@pytest.mark.parametrize("flags", [("--n-step", "2"), ("--td-mix", "0.5"), ("--loss", "outcome")])
def test_rl_target_options_need_online_updates(flags, tmp_path):
    result = invoke("rl", "--policy", "p", "--prm", "q", *flags, "--out", tmp_path / "r")
    one_line_error(result, "need --prm-update online")


# ---------------------------------------------------------------- the registry


def labelled_batch():
    """Two rollouts with verdicts, MC labels and step truth (the second has only a verdict)."""
    features = [
        prm_trainer.step_features(Encoded([1, 5, 6, 7, 8], [2, 4], 2), 1.0, [1.0, 0.5], [1, 0]),
        prm_trainer.step_features(Encoded([1, 5, 6], [2], 2), 0.0),
    ]
    return prm_trainer.StepCollator(pad_id=0)(features)


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_registered_loss_is_complete(name):
    import torch

    loss = TARGETS[name]
    assert callable(loss.target) and loss.help
    assert f"{name} ({loss.help})" in field_help(TrainPRMConfig, "loss")  # --help reads it
    assert TrainPRMConfig(data="d", loss=name).loss == name
    spec = Targets(name)
    assert isinstance(spec.label(), str) and spec.label()  # the train-prm log line
    batch = labelled_batch()
    y = spec(torch.full((2, 2), 0.5), batch)
    assert y.shape == (2, 2) and bool(((y >= 0) & (y <= 1)).all()) and y[1, 1] == 0
    online = name in ONLINE_LOSSES
    assert (loss.needs is None) == online
    assert (f"{name} (" in field_help(RLConfig, "loss")) == online


def test_unknown_loss_lists_the_registry(tmp_path):
    result = invoke("train-prm", "--data", "d", "--loss", "bogus", "--out", tmp_path / "r")
    assert one_line_error(result) == f"error: --loss bogus: expected {listed(TARGETS)}"
    assert listed(TARGETS) == "td, mc, truth or outcome"
    result = invoke("rl", "--policy", "p", "--prm", "q", "--loss", "bogus", "--out", tmp_path / "r")
    assert one_line_error(result) == "error: --loss bogus: expected td or outcome"
