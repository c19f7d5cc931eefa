import json
import os

import pytest

from tdrm_cli.config import SFTConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.runs import atomic_write_json, prepare_run, read_manifest, require_complete, run_stage


def test_manifest_lifecycle_and_config(tmp_path):
    cfg = SFTConfig(out=str(tmp_path / "r"), seed=3)
    with run_stage("sft", cfg) as run:
        assert read_manifest(run.path)["status"] == "running"
        (run.path / "artifact.txt").write_text("x")
    manifest = read_manifest(tmp_path / "r")
    assert manifest["status"] == "complete" and manifest["seed"] == 3 and manifest["finished"]
    assert {"tdrm", "torch", "transformers", "trl"} <= set(manifest["versions"])
    assert "batch_size: 64" in (tmp_path / "r" / "config.yaml").read_text()


def test_failure_is_recorded_and_resume(tmp_path):
    cfg = SFTConfig(out=str(tmp_path / "r"))
    with pytest.raises(RuntimeError), run_stage("sft", cfg):
        raise RuntimeError("boom")
    manifest = read_manifest(tmp_path / "r")
    assert manifest["status"] == "failed" and "boom" in manifest["error"]
    with pytest.raises(UsageError, match="--resume"):
        prepare_run("sft", SFTConfig(out=str(tmp_path / "r")))
    run = prepare_run("sft", SFTConfig(out=str(tmp_path / "r"), resume=True))
    assert run.resumed and read_manifest(run.path)["status"] == "running"


def test_refuses_complete_unless_overwrite(tmp_path):
    with run_stage("sft", SFTConfig(out=str(tmp_path / "r"))):
        pass
    with pytest.raises(UsageError, match="already holds a complete run"):
        prepare_run("sft", SFTConfig(out=str(tmp_path / "r")))
    run = prepare_run("sft", SFTConfig(out=str(tmp_path / "r"), overwrite=True))
    assert read_manifest(run.path)["status"] == "running"


def test_require_complete_refuses_running_and_non_runs(tmp_path):
    run = prepare_run("sft", SFTConfig(out=str(tmp_path / "r")))
    with pytest.raises(UsageError, match="run is 'running', not complete"):
        require_complete(run.path, "policy")
    with pytest.raises(UsageError, match="not a tdrm run folder"):
        require_complete(tmp_path, "policy")
    with pytest.raises(UsageError, match="no such file"):
        require_complete(tmp_path / "nope", "policy")
    run.complete()
    assert require_complete(run.path, "policy", "sft")["status"] == "complete"
    with pytest.raises(UsageError, match="expected collect"):
        require_complete(run.path, "data", "collect")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind
