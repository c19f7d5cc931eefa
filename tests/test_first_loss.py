"""The first logged train-prm loss, recomputed outside the trainer from the loop references.

`test_train_prm.py` pins the first losses to values the code itself recorded (stability).
Here the first training batch and the model as it was before its first step are caught,
and the loss is rebuilt in plain Python: step values from a plain forward pass, targets
from the per-row loop references of `test_td.py`, BCE averaged over the real steps. Any
error in the collator, the value position, the target wiring or the loss moves it.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from conftest import invoke
from test_prm import make_tiny_base
from test_td import ref_nstep, ref_td_lambda
from test_train_prm import TINY, make_collect_run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = make_tiny_base(tmp_path_factory.mktemp("base") / "model")
    return base, make_collect_run(tmp_path_factory.mktemp("runs") / "collect", base)


def reference_targets(variant: str, v: list[float], R: float, labels: list[float]) -> list[float]:
    zeros = [0.0] * len(v)
    if variant == "td":
        return ref_td_lambda(v, zeros, R, gamma=1.0, lam=0.8)
    if variant == "nstep":
        return ref_nstep(v, zeros, R, n=2, gamma=0.8)
    return [1.0 if label > 0 else 0.0 for label in labels]  # mc --hard


FLAGS = {
    "td": ["--loss", "td", "--td-lambda", "0.8", "--gamma", "1.0"],
    "nstep": ["--loss", "td", "--n-step", "2", "--gamma", "0.8"],
    "mc-hard": ["--loss", "mc", "--hard"],
}


@pytest.mark.parametrize("variant", sorted(FLAGS))
def test_first_loss_equals_an_independent_recomputation(variant, data, tmp_path, monkeypatch):
    import torch

    from tdrm_cli.prm_trainer import PRMTrainer

    base, collect = data
    first: dict = {}
    real = PRMTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if not first and model.training:
            first["model"] = copy.deepcopy(model).eval()
            first["inputs"] = {k: v.clone() for k, v in inputs.items()}
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PRMTrainer, "compute_loss", spy)
    out = tmp_path / variant
    result = invoke("train-prm", "--data", collect, "--base", base, "--out", out,
                    "--max-steps", "1", "--eval-fraction", "0", *FLAGS[variant], *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    logged = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]

    batch, model = first["inputs"], first["model"]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for b in range(batch["input_ids"].shape[0]):
        n = int(batch["step_mask"][b].sum())
        z = [float(logits[b, int(batch["step_index"][b, t]), 0]) for t in range(n)]
        v = [1 / (1 + math.exp(-x)) for x in z]
        labels = [float(x) for x in batch["mc_labels"][b, :n]]
        y = reference_targets(variant, v, float(batch["terminal"][b]), labels)
        terms += [
            -(yt * math.log(vt) + (1 - yt) * math.log(1 - vt)) for yt, vt in zip(y, v, strict=True)
        ]
    assert len(logged) == 1
    assert logged[0] == pytest.approx(sum(terms) / len(terms), abs=2e-6)
