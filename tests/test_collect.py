"""`tdrm collect`: the rollouts table, resume after a crash, MC labels vs step truth, bad input."""

import json
import random
import re
import shutil

import pandas as pd
import pytest

from conftest import invoke
from tdrm_cli import generation
from tdrm_cli.generation import Completion
from tdrm_cli.runs import atomic_write_json, read_manifest
from tdrm_cli.stages import collect
from tdrm_cli.stages.collect import COLUMNS, read_rollouts


def test_collect_end_to_end(tiny_collect, tiny_policy):
    manifest = read_manifest(tiny_collect)
    assert manifest["status"] == "complete" and manifest["stage"] == "collect"
    assert (
        manifest["inputs"]["policy"]["path"] == str(tiny_policy)
        and manifest["inputs"]["policy"]["sha256"]
    )
    assert not (tiny_collect / "shards").exists()
    df = read_rollouts(tiny_collect)
    assert tuple(df.columns) == COLUMNS and len(df) == 6 * 4
    assert sorted(df.groupby("problem_id").sample_idx.apply(list).iloc[0]) == [0, 1, 2, 3]
    assert set(df.correct) <= {0, 1} and df.policy.eq(str(tiny_policy)).all()
    assert not df.prompt.str.contains("\n").any()  # the raw question, not the formatted prompt
    for row in df.itertuples():
        assert len(row.step_labels) == len(row.steps) == len(row.step_truth)
        assert all(0.0 <= label <= 1.0 for label in row.step_labels)
        if row.steps:
            assert row.step_labels[-1] == row.correct  # the last step is labelled by the verdict
        if row.answer is None:
            assert row.correct == 0
    metrics = json.loads((tiny_collect / "metrics.json").read_text())
    assert metrics == manifest["metrics"]
    assert metrics["problems"] == 6 and metrics["samples"] == 24
    assert metrics["prompt_format"] == "template" and metrics["separator"] == "\n\n"
    assert metrics["pass@1"] == pytest.approx(df.correct.mean(), abs=1e-4)
    for key in (
        "pass@n",
        "wrong_step_frac",
        "mean_steps",
        "tokens_per_s",
        "mc_label_mean_wrong_steps",
        "coupling",
        "p_correct_by_first_error",
    ):
        assert key in metrics
    # process–outcome coupling, recomputed from the table by hand
    right = df[df.correct == 1]
    assert metrics["correct_samples"] == len(right)
    assert metrics["coupled_correct"] == sum(bool(t) and all(t) for t in right.step_truth)
    if len(right):
        assert metrics["coupling"] == pytest.approx(
            metrics["coupled_correct"] / len(right), abs=1e-4
        )
    assert sum(metrics["samples_by_first_error"].values()) == len(df)
    assert list(metrics["p_correct_by_first_error"])[-1] == "none"


def test_summary_prints_the_coupling_line(capsys):
    from tdrm_cli.console import console

    rows = [
        {"problem_id": "a", "steps": ["x", "y"], "answer": "1", "correct": 1, "step_truth": [1, 1]},
        {"problem_id": "a", "steps": ["x", "y"], "answer": "1", "correct": 1, "step_truth": [0, 1]},
        {"problem_id": "b", "steps": ["x"], "answer": "2", "correct": 0, "step_truth": [0]},
        {"problem_id": "b", "steps": ["x"], "answer": "2", "correct": 1, "step_truth": [0]},
    ]
    for row in rows:
        row["step_labels"] = None
    policy = collect.Policy(None, {}, "\n\n", "template")
    metrics = collect.summarize(rows, 10, 1.0, policy)
    assert metrics["coupling"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["p_correct_by_first_error"] == {"0": pytest.approx(2 / 3, abs=1e-4), "none": 1.0}
    with console.capture() as captured:
        collect.print_summary(metrics)
    text = " ".join(captured.get().split())
    assert "process–outcome coupling: 1 of 3 correct samples (33.3%) have every step right" in text
    assert "P(correct | first wrong step k, 0-based): 0 0.667 (n=3), none 1.000 (n=1)" in text
    assert "warning: most right answers come from wrong steps" in text


def small_run(policy, out, *extra):
    return invoke(
        "collect",
        "--policy",
        policy,
        "--out",
        out,
        "--problems",
        "4",
        "--n",
        "2",
        "--mc-rollouts",
        "2",
        "--max-new-tokens",
        "40",
        "--shard-size",
        "2",
        "--seed",
        "7",
        *extra,
    )


def test_resume_after_crash_equals_uninterrupted_run(tiny_policy, tmp_path, monkeypatch):
    assert small_run(tiny_policy, tmp_path / "whole").exit_code == 0
    write_shard, written = collect.write_shard, []

    def crash_after_first_shard(path, rows):
        if written:
            raise RuntimeError("killed between shards")
        write_shard(path, rows)
        written.append(path.name)

    monkeypatch.setattr(collect, "write_shard", crash_after_first_shard)
    crashed = small_run(tiny_policy, tmp_path / "resumed")
    assert crashed.exit_code != 0 and "killed" in str(crashed.exception)
    assert read_manifest(tmp_path / "resumed")["status"] == "failed" and written == [
        "shard-00000.parquet"
    ]
    monkeypatch.setattr(collect, "write_shard", write_shard)

    redone = []
    collect_shard = collect.collect_shard
    monkeypatch.setattr(
        collect, "collect_shard", lambda i, *a: redone.append(i) or collect_shard(i, *a)
    )
    result = small_run(tiny_policy, tmp_path / "resumed", "--resume")
    assert result.exit_code == 0, result.output
    assert redone == [1]  # shard 0 came from disk
    pd.testing.assert_frame_equal(
        read_rollouts(tmp_path / "resumed"), read_rollouts(tmp_path / "whole")
    )


def test_resume_refuses_changed_settings(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setattr(
        collect, "write_shard", lambda path, rows: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    assert small_run(tiny_policy, tmp_path / "r").exit_code != 0
    result = small_run(tiny_policy, tmp_path / "r", "--resume", "--n", "3")
    assert result.exit_code == 2
    assert "written with n=2, now 3" in result.stderr


class ScriptedArithPolicy:
    """A stand-in arith policy: it carries on from the last value the prefix states and slips
    (one too high) on each step with probability `slip`; slips never cancel, so a wrong
    prefix always ends wrong."""

    tokenizer = None
    slip = 0.15

    def __init__(self, model_path, **kwargs):
        pass

    def generate(self, prompts, sampling, on_batch=None):
        rng = random.Random(sampling.seed)
        out = []
        for prompt in prompts:
            question, *prefix = [s for s in prompt.split("\n\n") if s]
            numbers = [int(x) for x in re.findall(r"[+-]?\d+", question)]
            value = int(prefix[-1].split("=")[-1]) if prefix else numbers[0]
            samples = []
            for i in range(sampling.n):
                text = self.sample(i, value, numbers[1 + len(prefix) :], prefix, sampling, rng)
                samples.append(Completion(text, len(text), True))
            out.append(samples)
        if on_batch:
            on_batch(len(prompts) * sampling.n, sum(c.num_tokens for s in out for c in s))
        return out

    def sample(self, i, value, operands, prefix, sampling, rng) -> str:
        """Sample `i` of a prefix that stands at `value` with `operands` still to apply."""
        steps, v = [], value
        for b in operands:
            new = v + b + (rng.random() < self.slip)
            steps.append(f"{v}{'+' if b >= 0 else '-'}{abs(b)}={new}")
            v = new
        return "\n\n".join([*steps, f"answer {v}"])


def test_mc_labels_agree_with_step_truth(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setitem(generation.BACKENDS, "hf", ScriptedArithPolicy)
    out = tmp_path / "scripted"
    result = invoke(
        "collect",
        "--policy",
        tiny_policy,
        "--out",
        out,
        "--problems",
        "30",
        "--n",
        "4",
        "--mc-rollouts",
        "8",
        "--shard-size",
        "7",
    )
    assert result.exit_code == 0, result.output
    metrics = read_manifest(out)["metrics"]
    correct, wrong = metrics["mc_label_mean_correct_steps"], metrics["mc_label_mean_wrong_steps"]
    assert correct > 0.5 > 0.1 > wrong, (correct, wrong)
    df = read_rollouts(out)
    assert 0.2 < df.correct.mean() < 0.9 and metrics["wrong_step_frac"] > 0.1
    # Every step after the first wrong one is wrong too, and no continuation can repair it.
    for row in df.itertuples():
        if 0 in row.step_truth:
            first_wrong = row.step_truth.index(0)
            assert max(row.step_labels[first_wrong:]) == 0.0


def test_prompt_format_follows_the_model(tiny_policy, tmp_path):
    from transformers import AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_policy / "model", plain)
    (plain / "tdrm_policy.json").unlink()
    chat = tmp_path / "chat"
    shutil.copytree(plain, chat)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}\n\n"
    tokenizer.save_pretrained(chat)
    for model, expected in ((plain, "plain"), (chat, "chat")):
        out = tmp_path / f"run-{expected}"
        result = invoke(
            "collect",
            "--policy",
            model,
            "--out",
            out,
            "--problems",
            "1",
            "--n",
            "1",
            "--mc-rollouts",
            "0",
            "--max-new-tokens",
            "4",
        )
        assert result.exit_code == 0, result.output
        metrics = read_manifest(out)["metrics"]
        assert metrics["prompt_format"] == expected
        assert read_rollouts(out).step_labels.isna().all()  # no MC labels without rollouts


def test_bad_input_is_one_line_exit_2(tiny_policy, tmp_path):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    running = tmp_path / "running"
    running.mkdir()
    atomic_write_json(running / "manifest.json", {"stage": "sft", "status": "running"})
    cases = [
        (
            ["--policy", tiny_policy, "--task", "nope"],
            "error: --task nope: unknown task 'nope' (known: arith",
        ),
        (
            ["--policy", not_a_model],
            f"error: --policy {not_a_model}: not a model folder (no config.json) and not a tdrm run",
        ),
        (["--policy", tiny_policy, "--n", "0"], "error: --n must be > 0"),
        (
            ["--policy", running],
            f"error: --policy {running}: run is 'running', not complete (finish it with --resume first)",
        ),
        (
            ["--policy", tiny_policy, "--backend", "nope"],
            "error: --backend nope: unknown backend (known: hf, vllm)",
        ),
    ]
    for args, line in cases:
        out = tmp_path / "out"
        result = invoke("collect", "--out", out, *args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(line)
        assert not out.exists()


class ExactMCPolicy(ScriptedArithPolicy):
    """A scripted policy with known Monte-Carlo labels: its first samples are always right;
    of the K continuations of a prefix of t steps, exactly j = t mod (K + 1) reach the gold
    answer (the first j; the others end one too high)."""

    slip = 0.0

    def sample(self, i, value, operands, prefix, sampling, rng) -> str:
        right = len(prefix) % (sampling.n + 1) if prefix else sampling.n
        *steps, answer = super().sample(i, value, operands, prefix, sampling, rng).split("\n\n")
        v = int(answer.split()[-1])
        return "\n\n".join([*steps, f"answer {v if i < right else v + 1}"])


def test_mc_labels_are_exactly_the_share_of_winning_continuations(
    tiny_policy, tmp_path, monkeypatch
):
    monkeypatch.setitem(generation.BACKENDS, "hf", ExactMCPolicy)
    k = 3
    out = tmp_path / "exact"
    args = ["--problems", "6", "--n", "2", "--mc-rollouts", str(k), "--shard-size", "4"]
    result = invoke(
        "collect", "--policy", tiny_policy, "--task", "arith:ops=5", "--out", out, *args
    )
    assert result.exit_code == 0, result.output
    df = read_rollouts(out)
    assert len(df) == 12 and df.correct.all()
    for row in df.itertuples():
        steps = len(row.steps)
        assert steps == 6  # five operations and the answer
        expected = [(t % (k + 1)) / k for t in range(1, steps)] + [1.0]
        assert list(row.step_labels) == expected, (list(row.step_labels), expected)
