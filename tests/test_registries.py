"""Each choice comes from one registry: config validation and `--help` read the same dict."""

from __future__ import annotations

import pytest

from tdrm_cli.config import field_help
from tdrm_cli.configs.sample import BonConfig, CollectConfig, SearchConfig
from tdrm_cli.configs.train import RLConfig, TrainPRMConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.generation import BACKENDS
from tdrm_cli.tasks import TASKS
from tdrm_cli.voting import AGGREGATIONS, VOTES

REQUIRED = {
    BonConfig: {"policy": "p", "prm": ["q"]},
    SearchConfig: {"policy": "p", "prm": ["q"]},
    TrainPRMConfig: {"data": "d"},
    RLConfig: {"policy": "p", "reward": "rlvr"},
    CollectConfig: {"policy": "p"},
}
CHOICES = [
    (BonConfig, "agg", AGGREGATIONS),
    (BonConfig, "vote", VOTES),
    (SearchConfig, "agg", AGGREGATIONS),
    (SearchConfig, "vote", VOTES),
    (TrainPRMConfig, "agg", AGGREGATIONS),
    (RLConfig, "agg", AGGREGATIONS),
]


@pytest.mark.parametrize("cls, name, registry", CHOICES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_registered_name_is_accepted_and_shown(cls, name, registry):
    for choice in registry:
        assert getattr(cls(**REQUIRED[cls], **{name: choice}), name) == choice
        assert choice in field_help(cls, name)
    with pytest.raises(UsageError) as error:
        cls(**REQUIRED[cls], **{name: "bogus"})
    assert all(choice in str(error.value) for choice in registry), str(error.value)


def test_a_new_registry_entry_reaches_validation(monkeypatch):
    monkeypatch.setitem(AGGREGATIONS, "median", lambda values: sorted(values)[len(values) // 2])
    assert SearchConfig(**REQUIRED[SearchConfig], agg="median").agg == "median"


def test_backend_and_task_help_list_their_registries():
    assert all(name in field_help(CollectConfig, "backend") for name in BACKENDS)
    assert all(name in field_help(CollectConfig, "task") for name in TASKS)
