"""A PRM trained on a learnable signal discriminates; the same PRM on shuffled verdicts does not.

The signal: every step is one digit, a step is good when its digit is even, and a
solution is correct when all its steps are good (prefix-correct step truth, as for arith).
No step carries a marker of its own label: the PRM must learn which digits are bad and
carry "a bad step came before" to later steps. The shuffled control keeps the same steps
and permutes the verdicts across solutions, so nothing is left to learn.
"""

from __future__ import annotations

import json
import random

import pytest

from conftest import invoke
from test_prm import make_tiny_base
from test_train_prm import write_collect_run

STEPS, PROBLEMS, SAMPLES = 4, 96, 8


def parity_rollouts(seed: int, shuffle: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for p in range(PROBLEMS):
        for k in range(SAMPLES):
            digits = [rng.choice("02468") if rng.random() < 0.8 else rng.choice("13579")
                      for _ in range(STEPS)]  # fmt: skip
            good = [int(d) % 2 == 0 for d in digits]
            truth = [int(all(good[: t + 1])) for t in range(STEPS)]
            rows.append({
                "problem_id": f"p{p}", "prompt": f"{p}+0", "gold": "0", "steps": digits,
                "answer": "0" if truth[-1] else "1", "correct": truth[-1], "step_labels": None,
                "step_truth": truth, "policy": "scripted", "sample_idx": k,
            })  # fmt: skip
    if shuffle:
        verdicts = [r["correct"] for r in rows]
        rng.shuffle(verdicts)
        for row, verdict in zip(rows, verdicts, strict=True):
            row["correct"] = verdict
    return rows


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("base") / "model")


def train(tmp_path, base, rows, loss: str) -> dict:
    data = write_collect_run(tmp_path / "data", base, rows)
    out = tmp_path / "prm"
    result = invoke("train-prm", "--data", data, "--base", base, "--loss", loss,
                    "--max-steps", 100, "--batch-size", 32, "--learning-rate", 3e-3,
                    "--eval-fraction", 0.25, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("loss", ["td", "outcome"])
def test_prm_learns_a_learnable_signal(tmp_path, base, loss):
    metrics = train(tmp_path, base, parity_rollouts(0, shuffle=False), loss)
    assert metrics["step_auroc"] >= 0.8, metrics
    assert metrics["outcome_auroc"] >= 0.8, metrics
    assert metrics["value_std"] > 0.05, metrics
    assert metrics["degenerate"] is False, metrics


def test_prm_on_shuffled_verdicts_learns_nothing(tmp_path, base):
    metrics = train(tmp_path, base, parity_rollouts(0, shuffle=True), "td")
    # Near-constant values: their step AUROC is noise, so the spread is the measure.
    assert metrics["value_std"] < 0.05, metrics
    assert metrics["step_auroc"] < 0.8 and abs(metrics["outcome_auroc"] - 0.5) < 0.15, metrics
    assert metrics["degenerate"] is True, metrics
