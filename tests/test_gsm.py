"""`gsm-symbolic` from reasoning-gym: deterministic, disjoint splits; references pass their own check."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import needs
from tdrm_cli.errors import UsageError
from tdrm_cli.tasks import load_task

needs_rg = needs(importlib.util.find_spec("reasoning_gym") is not None, "needs tdrm-cli[gsm]")


@needs_rg
def test_problems_are_deterministic_disjoint_and_checkable():
    task = load_task("gsm-symbolic")
    train, test = task.problems("train", 30), task.problems("test", 10)
    assert not {p.question for p in train} & {p.question for p in test}
    assert [p.question for p in task.problems("test", 4)] == [p.question for p in test[:4]]
    assert [p.gold for p in load_task("gsm-symbolic").problems("test", 10)] == [
        p.gold for p in test
    ]
    assert load_task("gsm-symbolic:seed=1").problems("test", 3)[0].question != test[0].question
    for p in train + test:
        steps = task.reference_steps(p)
        assert len(steps) >= 2 and steps[-1].startswith("####")
        assert task.is_correct(p, task.extract_answer(steps)), (p.gold, steps[-1])
        assert task.step_truth(p, steps) is None
    assert not task.is_correct(test[0], str(int(float(test[0].gold)) + 1))


def test_options_and_missing_package(monkeypatch):
    with pytest.raises(UsageError, match="unknown option 'difficulty'"):
        load_task("gsm-symbolic:difficulty=2")
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'tdrm-cli\[gsm\]'"):
        load_task("gsm-symbolic").problems("train", 1)
