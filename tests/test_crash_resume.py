"""`kill -9` at fixed points, then `--resume`: the result equals an uninterrupted run.

Real subprocesses and real signals. Each kill point (after shard/checkpoint k, plus a
fixed delay) is a test parameter, so every run covers the same points; the uninterrupted
reference is run once per stage and shared. Every run uses one thread so their
arithmetic matches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdrm_cli.runs import read_manifest

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def tdrm(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tdrm_cli", *map(str, args)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`reference(stage, args)`: the folder of one uninterrupted run, run once per module."""
    done: dict[tuple, Path] = {}

    def get(stage: str, args: tuple) -> Path:
        key = (stage, *map(str, args))
        if key not in done:
            out = tmp_path_factory.mktemp("ref") / stage
            finish(tdrm(stage, *args, "--out", out))
            done[key] = out
        return done[key]

    return get


def kill_when(proc: subprocess.Popen, ready, delay: float, what: str) -> None:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; it must still be running."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, (
            f"{what}: exited before the kill point\n{proc.stderr.read()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"{what}: kill point never reached"
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, f"{what}: finished before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("after, delay", [(1, 0.0), (5, 0.15)])
def test_collect_killed_then_resumed_is_byte_identical(
    tiny_policy, reference, tmp_path, after, delay
):
    shards = 8
    args = ("--policy", tiny_policy, "--problems", shards, "--n", "3", "--mc-rollouts", "2",
            "--max-new-tokens", "60", "--shard-size", "1", "--batch-size", "32", "--seed", "11")  # fmt: skip
    what = f"collect killed {delay:.2f} s after shard {after} of {shards}"
    crashed = tmp_path / "crashed"
    victim = tdrm("collect", *args, "--out", crashed)
    kill_when(
        victim,
        lambda: len(list((crashed / "shards").glob("shard-*.parquet"))) >= after,
        delay,
        what,
    )
    assert read_manifest(crashed)["status"] == "running", what  # a killed run says so
    assert (crashed / ".lock").is_file(), what  # ...and leaves its (now stale) lock behind
    finish(tdrm("collect", *args, "--out", crashed, "--resume"))
    assert read_manifest(crashed)["status"] == "complete"
    ref = (reference("collect", args) / "rollouts.parquet").read_bytes()
    assert (crashed / "rollouts.parquet").read_bytes() == ref, what
    assert not (crashed / ".lock").exists() and not (crashed / "shards").exists()


def weight_gap(run: Path, other: Path) -> float:
    """Largest |difference| between the `model/` weights of two runs (same tensor names)."""
    from safetensors.torch import load_file

    a, b = (load_file(next((r / "model").glob("*.safetensors"))) for r in (run, other))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def killed_at_a_checkpoint_then_resumed(
    stage: str, args: tuple, after: int, delay: float, tmp_path: Path
) -> tuple[Path, str]:
    """Run `stage` in tmp_path/crashed, kill it `delay` s after its first complete checkpoint
    at or past step `after` (the trainer may rotate an older one away between two looks),
    and resume it; (crashed, a description of the kill point)."""
    what = f"{stage} killed {delay:.2f} s after checkpoint-{after}"
    crashed = tmp_path / "crashed"
    victim = tdrm(stage, *args, "--out", crashed)

    def reached() -> bool:
        return any(
            int(p.name.removeprefix("checkpoint-")) >= after
            and (p / "trainer_state.json").is_file()
            for p in (crashed / "checkpoints").glob("checkpoint-*")
            if p.name.removeprefix("checkpoint-").isdigit()
        )

    kill_when(victim, reached, delay, what)
    assert read_manifest(crashed)["status"] == "running", what
    finish(tdrm(stage, *args, "--out", crashed, "--resume"))
    return crashed, what


@pytest.mark.parametrize("after, delay", [(4, 0.0), (12, 0.2)])
def test_train_prm_killed_then_resumed_matches(tiny_collect, reference, tmp_path, after, delay):
    args = ("--data", tiny_collect, "--max-steps", "40", "--save-steps", "4", "--batch-size", "4",
            "--logging-steps", "1", "--report-to", "none", "--seed", "4")  # fmt: skip
    crashed, what = killed_at_a_checkpoint_then_resumed("train-prm", args, after, delay, tmp_path)
    ref = reference("train-prm", args)
    got = json.loads((crashed / "metrics.json").read_text())
    want = json.loads((ref / "metrics.json").read_text())
    assert got["train_steps"] == want["train_steps"] == 40, what
    # the resume ran only the steps after a checkpoint at or past the kill point
    assert want["steps_run"] == 40 and 0 < got["steps_run"] <= 40 - after, (what, got)
    for key in ("step_auroc", "outcome_auroc", "td_error"):
        if isinstance(want.get(key), float):
            assert abs(got[key] - want[key]) < 1e-3, (what, key, got[key], want[key])
    worst = weight_gap(crashed, ref)
    assert worst < 1e-4, (what, worst)
    assert not (crashed / "checkpoints").exists()


def test_crash_after_the_last_step_resumes_to_the_same_step_count(
    tiny_collect, tmp_path, monkeypatch
):
    """No checkpoint at max_steps: resuming from one would make the Trainer run a step too many."""
    from conftest import invoke
    from tdrm_cli.prm import PRM

    args = ("train-prm", "--data", tiny_collect, "--out", tmp_path / "p", "--max-steps", "4",
            "--save-steps", "2", "--batch-size", "4", "--logging-steps", "1", "--report-to", "none")  # fmt: skip

    def killed_before_saving(self, path):
        raise RuntimeError("killed")

    monkeypatch.setattr(PRM, "save", killed_before_saving)
    assert invoke(*args).exit_code != 0
    assert sorted(p.name for p in (tmp_path / "p" / "checkpoints").iterdir()) == ["checkpoint-2"]
    monkeypatch.undo()
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "p" / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
    assert read_manifest(tmp_path / "p")["metrics"]["train_steps"] == 4


def test_unfinished_checkpoint_is_skipped_and_removed(tmp_path):
    from tdrm_cli.checkpoints import last_checkpoint

    for step, state in ((2, "{}"), (4, "{}"), (6, '{"global_st'), (8, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path, required=("critic.pt",)) is None  # rl's extra file missing
    assert last_checkpoint(tmp_path / "none") is None


@pytest.mark.slow
@pytest.mark.parametrize("after, delay", [(2, 0.0), (6, 0.2)])
def test_rl_killed_then_resumed_matches(tiny_policy, reference, tmp_path, after, delay):
    args = ("--policy", tiny_policy, "--reward", "rlvr", "--problems", "8", "--batch-size", "2",
            "--num-generations", "2", "--max-steps", "12", "--max-completion-length", "16",
            "--save-steps", "2", "--eval-problems", "2", "--eval-every", "2",
            "--report-to", "none", "--seed", "3")  # fmt: skip
    crashed, what = killed_at_a_checkpoint_then_resumed("rl", args, after, delay, tmp_path)
    ref = reference("rl", args)
    got, want = (read_manifest(p)["metrics"] for p in (crashed, ref))
    assert got["train_steps"] == want["train_steps"] == 12, what
    assert want["steps_run"] == 12 and 0 < got["steps_run"] <= 12 - after, (what, got)
    assert got["pass@1"] == want["pass@1"], what
    worst = weight_gap(crashed, ref)
    assert worst < 1e-4, (what, worst)


RECIPE = """\
root: {root}
seed: 1
stages:
  - {{name: sft, stage: sft, args: {{task: 'arith:ops=2', max_steps: 4, train_problems: 64,
      hidden_size: 16, layers: 1, heads: 1, eval_problems: 2}}}}
  - {{name: collect, stage: collect, args: {{policy: "@sft", problems: 6, n: 3, mc_rollouts: 2,
      max_new_tokens: 40, shard_size: 1}}}}
  - {{name: prm, stage: train-prm, args: {{data: "@collect", max_steps: 4, batch_size: 4,
      report_to: none}}}}
"""


@pytest.mark.slow
def test_pipeline_killed_then_rerun_matches(tmp_path):
    import pandas as pd

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(RECIPE.format(root=tmp_path / name))
        return path

    delay = 0.2
    what = f"pipeline killed {delay:.2f} s after the first collect shard"
    reference = tdrm("pipeline", recipe("ref"))
    victim = tdrm("pipeline", recipe("crashed"))
    shards = tmp_path / "crashed" / "collect" / "shards"
    kill_when(victim, lambda: any(shards.glob("shard-*.parquet")), delay, what)
    finish(tdrm("pipeline", recipe("crashed")))  # a pipeline resumes what it finds running
    finish(reference)
    got, want = (
        pd.read_parquet(tmp_path / r / "collect" / "rollouts.parquet").drop(columns="policy")
        for r in ("crashed", "ref")
    )
    pd.testing.assert_frame_equal(got, want)
    assert weight_gap(tmp_path / "crashed" / "prm", tmp_path / "ref" / "prm") < 1e-5, what
