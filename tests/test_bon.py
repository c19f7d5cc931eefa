"""`tdrm bon`: end to end on the tiny policy, results.json recomputed from scores.parquet, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import invoke, one_line_error
from tdrm_cli.configs.train import TrainPRMConfig
from tdrm_cli.runs import prepare_run
from test_train_prm import make_collect_run


def make_prm(path: Path, policy_run: Path, seed: int = 0) -> Path:
    """A PRM model folder: the policy's backbone with a seeded random value head (no training)."""
    import torch

    from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
    from tdrm_cli.steps import read_policy_meta

    base = str(policy_run / "model")
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(base)
    model = load_value_model(base, tokenizer.pad_token_id)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # spread the values so votes differ between PRMs
    PRM(model, tokenizer, prm_meta(tokenizer, read_policy_meta(base), agg="min", loss="td")).save(
        path
    )
    return path


def make_prm_run(path: Path, policy_run: Path, status: str = "complete") -> Path:
    """A train-prm run folder holding a PRM, `complete` or left `running`."""
    run = prepare_run("train-prm", TrainPRMConfig(data="unused", out=str(path)))
    make_prm(path / "model", policy_run, seed=2)
    if status == "complete":
        run.complete({})
    return path


@pytest.fixture(scope="module")
def prms(tiny_policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("prms")
    return make_prm_run(root / "prm-td", tiny_policy), make_prm(
        root / "prm-mc", tiny_policy, seed=1
    )


# ---------------------------------------------------------------- an independent recomputation


AGG = {"min": min, "last": lambda v: v[-1], "prod": math.prod, "mean": lambda v: sum(v) / len(v)}


def recompute(
    frame: pd.DataFrame,
    column: str | None,
    agg: str | None,
    vote: str | None,
    n: int,
    trials: int,
    seed: int,
):
    """Accuracy at n from scores.parquet alone: same subset rule, votes and aggregations rewritten."""
    groups = [g.sort_values("sample_idx") for _, g in frame.groupby("problem_id", sort=False)]
    m = len(groups[0])
    accs = []
    for trial in range(trials if n < m else 1):
        rng = np.random.default_rng([seed, n, trial])
        hits = 0
        for g in groups:
            sub = g.iloc[sorted(rng.permutation(m)[:n])] if n < m else g
            answers, correct = list(sub["answer"]), list(sub["correct"])
            scores = (
                [AGG[agg](list(v)) if len(v) else 0.0 for v in sub[column]]
                if column
                else [1.0] * len(sub)
            )
            if vote is None:
                hits += any(correct)
            elif vote == "naive":
                hits += correct[scores.index(max(scores))]
            else:  # weighted / majority: total per answer (None excluded), ties to the answer seen first
                totals = {}
                for a, s in zip(answers, scores, strict=True):
                    if a is not None:
                        totals[a] = totals.get(a, 0.0) + s
                if totals:
                    best = max(totals, key=lambda a: (totals[a], -answers.index(a)))
                    hits += correct[answers.index(best)]
        accs.append(hits / len(groups))
    return float(np.mean(accs)), float(np.std(accs))


def test_bon_end_to_end_results_match_an_independent_recomputation(tiny_policy, prms, tmp_path):
    args = [
        "bon",
        "--policy",
        tiny_policy,
        "--prm",
        prms[0],
        "--prm",
        prms[1],
        "--n",
        "8",
        "--problems",
        "5",
        "--agg",
        "all",
        "--vote",
        "all",
        "--subsets",
        "3",
        "--max-new-tokens",
        "64",
        "--batch-size",
        "40",
    ]
    result = invoke(*args, "--out", tmp_path / "b1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "b1"
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "best-of-N accuracy" in result.stderr and "majority" in result.stderr
    results = json.loads((out / "results.json").read_text())
    frame = pd.read_parquet(out / "scores.parquet")
    assert len(frame) == 40 and {"scores_prm-td", "scores_prm-mc"} <= set(frame.columns)
    assert results["ns"] == [1, 2, 4, 8] and results["prms"] == {
        "prm-td": str(prms[0]),
        "prm-mc": str(prms[1]),
    }
    # 2 references + 2 PRMs x 4 aggregations x 2 votes, at 4 values of N
    assert len(results["rows"]) == (2 + 2 * 4 * 2) * 4
    for row in results["rows"]:
        column = f"scores_{row['prm']}" if row["prm"] else None
        assert (row["accuracy"], row["std"]) == pytest.approx(
            recompute(frame, column, row["agg"], row["vote"], row["n"], 3, 0)
        ), row
    assert (out / "bon_accuracy.png").stat().st_size > 0
    # PRM-weighted minus majority at N=8: recomputed per problem from scores.parquet.
    assert len(results["vs_majority"]) == 2 * 4
    at_8 = {r["name"]: r["accuracy"] for r in results["rows"] if r["n"] == 8}
    for paired in results["vs_majority"]:
        prm, agg, _ = paired["name"].split("/")
        expected = at_8[paired["name"]] - at_8["majority"]
        assert paired["minus_majority"] == pytest.approx(expected, abs=1e-4), paired
        low, high = paired["ci95"]
        assert low <= paired["minus_majority"] <= high
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and set(manifest["inputs"]) == {
        "policy",
        "prm0",
        "prm1",
    }
    assert manifest["metrics"]["pass@n"] == pytest.approx(
        next(r["accuracy"] for r in results["rows"] if r["name"] == "pass@N" and r["n"] == 8),
        abs=1e-4,
    )
    again = invoke(*args, "--out", tmp_path / "b2")
    assert (
        again.exit_code == 0
        and (tmp_path / "b2" / "results.json").read_text() == (out / "results.json").read_text()
    )


def test_bon_reuses_collect_samples(tiny_policy, prms, tmp_path):
    collect = make_collect_run(tmp_path / "collect", tiny_policy, problems=3, n=4)
    result = invoke(
        "bon", "--samples", collect, "--prm", prms[1], "--n", "4", "--out", tmp_path / "b"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "b" / "scores.parquet")
    rollouts = pd.read_parquet(collect / "rollouts.parquet")
    assert list(frame["steps"].map(list)) == list(rollouts["steps"].map(list))
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["inputs"]["samples"][
        "path"
    ] == str(collect)
    line = one_line_error(
        invoke("bon", "--samples", collect, "--prm", prms[1], "--n", "8", "--out", tmp_path / "c")
    )
    assert line == f"error: --n 8: --samples {collect} has only 4 samples for arith-train-00000"


# ---------------------------------------------------------------- bad input


def test_n_zero(tiny_policy, prms, tmp_path):
    line = one_line_error(
        invoke(
            "bon", "--policy", tiny_policy, "--prm", prms[0], "--n", "0", "--out", tmp_path / "r"
        )
    )
    assert line == "error: --n must be > 0"


def test_prm_run_that_is_not_complete(tiny_policy, tmp_path):
    running = make_prm_run(tmp_path / "prm-running", tiny_policy, status="running")
    line = one_line_error(
        invoke("bon", "--policy", tiny_policy, "--prm", running, "--out", tmp_path / "r")
    )
    assert (
        line
        == f"error: --prm {running}: run is 'running', not complete (finish it with --resume first)"
    )
    assert not (tmp_path / "r").exists()


def test_prm_pointing_at_a_policy(tiny_policy, tmp_path):
    line = one_line_error(
        invoke("bon", "--policy", tiny_policy, "--prm", tiny_policy, "--out", tmp_path / "r")
    )
    assert line == f"error: --prm {tiny_policy}: is a 'sft' run, expected train-prm"
    model = tiny_policy / "model"
    line = one_line_error(
        invoke("bon", "--policy", tiny_policy, "--prm", model, "--out", tmp_path / "r")
    )
    assert line.startswith(
        f"error: --prm {model}: no tdrm_prm.json (not a PRM trained by tdrm train-prm) and no "
        "public PRM format matches it; name one with --prm-format ("
    )
    assert not (tmp_path / "r").exists()
