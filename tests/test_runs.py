import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import invoke
from tdrm_cli.configs.sample import CollectConfig
from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.runs import (
    atomic_write_json,
    check_inputs_unchanged,
    prepare_run,
    read_manifest,
    require_complete,
    run_stage,
)


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


# ---------------------------------------------------------------- one writer per folder

HOLD_LOCK = """
import sys, time
from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.runs import prepare_run
prepare_run("sft", SFTConfig(out=sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock_in_child(out):
    """A real second process that opens `out` as a run and keeps it locked."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_writer_gets_a_clear_error_not_interleaved_files(tmp_path):
    out = tmp_path / "r"
    child = hold_lock_in_child(out)
    try:
        result = invoke("sft", "--out", out, "--resume", "--max-steps", "1")
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"in use by pid {child.pid}" in line and str(out) in line
        assert read_manifest(out)["status"] == "running"  # the holder's run, untouched
        assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "manifest.json"]
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "r"
    child = hold_lock_in_child(out)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (
        f"pid {child.pid}" in (out / ".lock").read_text()
    )  # the dead holder's file is still there
    run = prepare_run("sft", SFTConfig(out=str(out), resume=True))
    assert f"pid {os.getpid()}" in (out / ".lock").read_text()
    with pytest.raises(UsageError, match=f"in use by pid {os.getpid()}"):
        prepare_run("sft", SFTConfig(out=str(out), resume=True))
    run.release()
    assert not (out / ".lock").exists()
    prepare_run("sft", SFTConfig(out=str(out), resume=True)).release()


def test_resume_refuses_an_input_that_changed(tmp_path):
    with run_stage("sft", SFTConfig(out=str(tmp_path / "policy"))):
        pass
    run = prepare_run(
        "collect", CollectConfig(policy=str(tmp_path / "policy"), out=str(tmp_path / "c"))
    )
    run.add_input("policy", tmp_path / "policy")
    run.fail(RuntimeError("killed"))
    run.release()
    manifest = json.loads((tmp_path / "policy" / "manifest.json").read_text())
    manifest["seed"] = 7  # the input run was replaced / edited after the collect started
    atomic_write_json(tmp_path / "policy" / "manifest.json", manifest)
    cfg = CollectConfig(policy=str(tmp_path / "policy"), out=str(tmp_path / "c"), resume=True)
    with pytest.raises(UsageError, match="input 'policy' .* is not the run this one started from"):
        prepare_run("collect", cfg)
    assert read_manifest(tmp_path / "c")["status"] == "failed"
    assert not (tmp_path / "c" / ".lock").exists()


def test_runs_listing_tells_running_from_interrupted(tmp_path):
    alive = hold_lock_in_child(tmp_path / "alive")
    dead = hold_lock_in_child(tmp_path / "dead")
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    try:
        result = invoke("runs", tmp_path)
        assert result.exit_code == 0, result.output
        rows = {line.split()[1]: line for line in result.stderr.splitlines() if " sft " in line}
        assert "running" in rows["alive"] and "interrupted" in rows["dead"], result.stderr
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------- inputs are never clobbered


def _tree_bytes(root):
    """Every file under `root` (but the lock) with its bytes: equal before and after means untouched."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _tdrm(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tdrm_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _one_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    "stage, out_of",
    [
        ("collect", "is"),  # --out equal to the policy run
        ("collect", "inside"),  # --out inside the policy run's model folder
        ("collect", "contains"),  # --out is a folder holding the policy run
        ("collect", "symlink"),  # --out a symlink to the policy run
        ("train-prm", "is"),  # --out equal to the collect run
    ],
)
def test_overwrite_never_touches_an_input(stage, out_of, tmp_path, tiny_policy, tiny_collect):
    import shutil

    policy = tmp_path / "home" / "sftcopy"
    shutil.copytree(tiny_policy, policy)
    data = tmp_path / "collectcopy"
    shutil.copytree(tiny_collect, data)
    source = policy if stage == "collect" else data
    out = {
        "is": source,
        "inside": source / "model" / "sub",
        "contains": source.parent,
        "symlink": tmp_path / "link",
    }[out_of]
    if out_of == "symlink":
        out.symlink_to(source)
    before = _tree_bytes(source)
    if stage == "collect":
        flags = ("--policy", policy, "--problems", 2, "--n", 1, "--mc-rollouts", 0)
    else:
        flags = ("--data", data, "--max-steps", 1, "--report-to", "none")
    proc = _tdrm(stage, *flags, "--out", out, "--overwrite")
    _one_line(proc, "--out", "input", "another folder")
    assert _tree_bytes(source) == before


def test_overwrite_replaces_only_the_same_stage(tmp_path, tiny_policy, tiny_collect):
    import shutil

    data = tmp_path / "c"
    shutil.copytree(tiny_collect, data)
    before = _tree_bytes(data)
    proc = _tdrm("sft", "--out", data, "--overwrite", "--max-steps", 1)
    _one_line(proc, "holds a 'collect' run", "only a run of the same stage")
    assert _tree_bytes(data) == before


def test_resume_refuses_other_or_missing_inputs(tmp_path, tiny_collect):
    import shutil

    first, other = tmp_path / "kA", tmp_path / "c0"
    shutil.copytree(tiny_collect, first)
    shutil.copytree(tiny_collect, other)
    (tmp_path / "sub").mkdir()
    flags = ("--max-steps", 1, "--report-to", "none", "--out", "rz")
    assert _tdrm("train-prm", "--data", "kA", *flags, cwd=tmp_path).returncode == 0
    out = tmp_path / "rz"
    manifest = read_manifest(out)
    assert manifest["inputs"]["data"]["path"] == str(first.resolve())
    manifest["status"] = "failed"  # as if killed: resumable
    atomic_write_json(out / "manifest.json", manifest)
    # Another --data than the one it started from: refused, naming the first one.
    proc = _tdrm("train-prm", "--data", "c0", *flags, "--resume", cwd=tmp_path)
    _one_line(proc, "other inputs", str(first.resolve()))
    # The same input named from another directory is the same run.
    proc = _tdrm(
        "train-prm", "--data", "../kA", *flags[:-1], "../rz", "--resume", cwd=tmp_path / "sub"
    )
    assert proc.returncode == 0, proc.stderr
    # An input that cannot be found any more is refused, not skipped.
    manifest = read_manifest(out)
    manifest["inputs"]["data"]["path"] = str(tmp_path / "gone")
    with pytest.raises(UsageError, match="is gone"):
        check_inputs_unchanged(out, manifest)
