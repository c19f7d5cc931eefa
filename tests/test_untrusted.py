"""Untrusted model files and configs: pickle weights, code in YAML."""

from __future__ import annotations

import shutil

import pytest

from conftest import invoke, one_line_error
from tdrm_cli.runs import read_manifest


@pytest.fixture(scope="module")
def pickled_policy(tiny_policy, tmp_path_factory):
    """The tiny policy's model folder with its safetensors replaced by a pickle `.bin`."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickled") / "model"
    shutil.copytree(tiny_policy / "model", folder)
    (weights,) = folder.glob("*.safetensors")
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    return folder


COLLECT = ("--problems", "2", "--n", "2", "--mc-rollouts", "0", "--max-new-tokens", "16")


def test_pickle_weights_are_refused_by_default(pickled_policy, tmp_path):
    out = tmp_path / "c"
    line = one_line_error(invoke("collect", "--policy", pickled_policy, "--out", out, *COLLECT))
    assert str(pickled_policy / "pytorch_model.bin") in line and "--allow-pickle" in line
    assert not out.exists() or read_manifest(out)["status"] != "complete"


def test_allow_pickle_loads_them(pickled_policy, tiny_policy, tmp_path):
    import pandas as pd

    args = ("--out", tmp_path / "c", "--seed", "3", *COLLECT)
    result = invoke("collect", "--policy", pickled_policy, "--allow-pickle", *args)
    assert result.exit_code == 0, result.output
    # the same weights as the safetensors original: the same samples
    same = invoke("collect", "--policy", tiny_policy / "model", *args[2:], "--out", tmp_path / "s")
    assert same.exit_code == 0, same.output
    cols = ["problem_id", "steps", "answer", "correct"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "c" / "rollouts.parquet")[cols],
        pd.read_parquet(tmp_path / "s" / "rollouts.parquet")[cols],
    )


def test_pickle_prm_is_refused_by_bon(pickled_policy, tiny_policy, tiny_prm, tmp_path):
    import torch
    from safetensors.torch import load_file

    prm = tmp_path / "prm"
    shutil.copytree(tiny_prm / "model", prm)
    (weights,) = prm.glob("*.safetensors")
    torch.save(load_file(weights), prm / "pytorch_model.bin")
    weights.unlink()
    args = ("--policy", tiny_policy, "--prm", prm, "--problems", "1", "--n", "2")
    line = one_line_error(invoke("bon", *args, "--out", tmp_path / "b"))
    assert str(prm / "pytorch_model.bin") in line


def test_yaml_cannot_construct_python_objects(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    line = one_line_error(invoke("sft", "--config", evil, "--out", tmp_path / "r"))
    assert str(evil) in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "r").exists()
