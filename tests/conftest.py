"""Shared fixtures: a tiny policy trained once per session, a CLI runner."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

IN_CI = os.environ.get("CI") == "true"


def needs(available: bool, reason: str):
    """`skipif` for an optional dependency, except under CI=true: there the test runs (and
    fails on the missing dependency), so CI cannot pass with a part of the suite skipped."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)


def missing(reason: str) -> NoReturn:
    """Inside a test: skip for a missing optional dependency; under CI=true, fail."""
    if IN_CI:
        pytest.fail(f"{reason} (under CI=true a missing dependency fails)")
    pytest.skip(reason)


def invoke(*args: str):
    """Run `tdrm ARGS` in-process; returns Click's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from tdrm_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *needles) -> str:
    """The single `error: ...` line of a failed command (exit 2, no traceback) holding `needles`."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (str(needle), lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A `tdrm sft` run on a tiny budget: a real, complete policy run folder."""
    out = tmp_path_factory.mktemp("runs") / "sft"
    result = invoke(
        "sft",
        "--out",
        out,
        "--max-steps",
        "20",
        "--train-problems",
        "400",
        "--hidden-size",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--eval-problems",
        "8",
        "--save-steps",
        "10",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_collect(tiny_policy, tmp_path_factory):
    """A `tdrm collect` run from `tiny_policy`: a complete run folder holding `rollouts.parquet`."""
    out = tmp_path_factory.mktemp("runs") / "collect"
    result = invoke(
        "collect",
        "--policy",
        tiny_policy,
        "--out",
        out,
        "--problems",
        "6",
        "--n",
        "4",
        "--mc-rollouts",
        "2",
        "--max-new-tokens",
        "80",
        "--shard-size",
        "3",
        "--batch-size",
        "32",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_prm(tiny_collect, tmp_path_factory):
    """A `tdrm train-prm` run (TD loss, a few steps) on `tiny_collect`: a complete PRM run folder."""
    out = tmp_path_factory.mktemp("runs") / "prm"
    result = invoke(
        "train-prm",
        "--data",
        tiny_collect,
        "--out",
        out,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--report-to",
        "none",
    )
    assert result.exit_code == 0, result.output
    return out
