"""`tdrm rl`: GRPO end to end on the tiny policy, a fake PRM that steers it, bad input, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, one_line_error
from tdrm_cli.stages import rl
from tdrm_cli.tasks.arith import ArithTask


def make_prm_dir(path: Path, policy_run: Path) -> Path:
    """A PRM folder (fresh head on the tiny policy's backbone) that `prm.load_prm` accepts."""
    import torch

    from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
    from tdrm_cli.steps import read_policy_meta

    base = str(policy_run / "model")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    model = load_value_model(base, tokenizer.pad_token_id)
    return PRM(
        model, tokenizer, prm_meta(tokenizer, read_policy_meta(base), agg="min", loss="td")
    ).save(path)


def state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def differs(a: dict, b: dict) -> bool:
    """Trained further: same keys, every weight finite, and some weight changed (NaN != NaN
    would otherwise count as a change)."""
    assert a.keys() == b.keys()
    assert all(bool(v.isfinite().all()) for v in b.values())
    return any(not (a[k] == b[k]).all() for k in a)


@pytest.fixture(scope="module")
def prm_dir(tiny_policy, tmp_path_factory):
    return make_prm_dir(tmp_path_factory.mktemp("prm") / "prm", tiny_policy)


TINY = (
    "--problems",
    "8",
    "--batch-size",
    "2",
    "--num-generations",
    "4",
    "--max-steps",
    "2",
    "--max-completion-length",
    "24",
    "--learning-rate",
    "1e-3",
)


def test_prm_rlvr_run_with_online_prm_updates(tiny_policy, prm_dir, tmp_path):
    out = tmp_path / "rl"
    result = invoke(
        "rl",
        "--policy",
        tiny_policy,
        "--prm",
        prm_dir,
        "--reward",
        "prm+rlvr",
        "--prm-weight",
        "0.5",
        *TINY,
        "--prm-update",
        "online",
        "--prm-update-every",
        "1",
        "--prm-batch-size",
        "4",
        "--eval-problems",
        "4",
        "--eval-every",
        "1",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # logs and progress go to stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and set(manifest["inputs"]) == {"policy", "prm"}

    # the saved policy loads, keeps the tokenizer and prompt meta, and moved away from the start
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(out / "model"))
    AutoTokenizer.from_pretrained(str(out / "model"))
    assert (out / "model" / "tdrm_policy.json").read_text() == (
        tiny_policy / "model" / "tdrm_policy.json"
    ).read_text()
    assert differs(state_dict(tiny_policy / "model"), state_dict(out / "model"))

    # the online critic took TD steps on both GRPO steps' rollouts and was saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert [u["step"] for u in metrics["prm_updates"]] == [1, 2]
    assert all(u["rollouts"] <= 8 and u["gradient_steps"] >= 1 for u in metrics["prm_updates"])
    from tdrm_cli.prm import load_prm

    updated = load_prm(out / "prm")
    assert updated.meta["online_updates"] == 2
    assert differs(state_dict(prm_dir), state_dict(out / "prm"))

    # each reward is logged on its own; accuracy curve per step; tensorboard events
    history = json.loads((out / "log_history.json").read_text())
    assert {"rewards/prm/mean", "rewards/verifier/mean"} <= set(history[0])
    curve = json.loads((out / "eval_curve.json").read_text())
    assert [(p["step"], p["problems_seen"]) for p in curve["points"]] == [(0, 0), (1, 2), (2, 4)]
    assert metrics["problems_seen"] == 4 and "pass@1" in metrics and "train_accuracy" in metrics
    assert (out / "eval_curve.png").stat().st_size > 0
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert not (out / "checkpoints").exists()


def test_killed_run_resumes_from_its_checkpoint(tiny_policy, prm_dir, tmp_path, monkeypatch):
    out = tmp_path / "rl"
    step_end = rl.AccuracyCurve.on_step_end

    def killed_after_step_3(self, args, state, control, **kwargs):
        step_end(self, args, state, control, **kwargs)
        if state.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(rl.AccuracyCurve, "on_step_end", killed_after_step_3)
    flags = (
        "--policy",
        tiny_policy,
        "--prm",
        prm_dir,
        "--problems",
        "8",
        "--batch-size",
        "2",
        "--num-generations",
        "2",
        "--max-steps",
        "4",
        "--max-completion-length",
        "8",
        "--save-steps",
        "2",
        "--eval-problems",
        "2",
        "--eval-every",
        "1",
        "--prm-update",
        "online",
        "--prm-update-every",
        "1",
        "--report-to",
        "none",
        "--out",
        out,
    )
    invoke("rl", *flags)
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    assert (out / "checkpoints" / "checkpoint-2" / rl.ONLINE_PRM_STATE).is_file()
    monkeypatch.setattr(rl.AccuracyCurve, "on_step_end", step_end)
    result = invoke("rl", *flags, "--resume")
    assert result.exit_code == 0, result.output
    curve = json.loads((out / "eval_curve.json").read_text())["points"]
    assert [p["step"] for p in curve] == [
        0,
        1,
        2,
        3,
        4,
    ]  # steps 0-2 kept, 3-4 redone after checkpoint-2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and [u["step"] for u in metrics["prm_updates"]] == [
        1,
        2,
        3,
        4,
    ]


class SevensPRM:
    """A fake PRM that prefers one answer: every step is worth the share of its characters that are '7'."""

    separator = "\n\n"
    agg = "mean"

    def __init__(self):
        self.questions: list[str] = []

    def score(self, problems, solutions):
        self.questions.extend(problems)
        return [[step.count("7") / len(step) for step in steps] for steps in solutions]


def prob_of_seven(model_dir: Path, prompts: list[str]) -> float:
    """Mean probability that the policy's first completion character is '7'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    seven = tokenizer.convert_tokens_to_ids("7")
    probs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            probs.append(torch.softmax(model(input_ids=ids).logits[0, -1], -1)[seven].item())
    return sum(probs) / len(probs)


def test_prm_only_run_moves_the_policy_toward_what_the_prm_prefers(
    tiny_policy, tmp_path, monkeypatch
):
    from tdrm_cli.stages.sft import PROMPT_TEMPLATE

    fake = SevensPRM()
    monkeypatch.setattr(rl, "load_reward_prm", lambda cfg: fake)
    out = tmp_path / "rl"
    result = invoke(
        "rl",
        "--policy",
        tiny_policy,
        "--prm",
        tiny_policy,
        "--reward",
        "prm",
        "--problems",
        "32",
        "--batch-size",
        "4",
        "--num-generations",
        "8",
        "--max-steps",
        "8",
        "--max-completion-length",
        "12",
        "--learning-rate",
        "1e-2",
        "--eval-problems",
        "0",
        "--report-to",
        "none",
        "--seed",
        "3",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    prompts = [PROMPT_TEMPLATE.format(question=p.question) for p in ArithTask().problems("test", 8)]
    before, after = (
        prob_of_seven(tiny_policy / "model", prompts),
        prob_of_seven(out / "model", prompts),
    )
    assert after > 2 * before, (before, after)
    # the problems came in the seed's fixed stream order
    stream = [p.question for p in rl.problem_stream(ArithTask(), 32, seed=3)]
    assert list(dict.fromkeys(fake.questions)) == stream
    history = json.loads((out / "log_history.json").read_text())
    assert history[-2]["rewards/prm/mean"] > history[0]["rewards/prm/mean"]


def test_problem_stream_is_fixed_by_the_seed():
    task = ArithTask()
    first, again, other = (rl.problem_stream(task, 50, s) for s in (0, 0, 1))
    assert [p.id for p in first] == [p.id for p in again] != [p.id for p in other]
    assert sorted(p.id for p in first) == sorted(p.id for p in other)  # same problems, other order


def test_yaml_config_reaches_grpo(tmp_path):
    from tdrm_cli.config import build_config, load_yaml
    from tdrm_cli.configs.train import RLConfig

    path = tmp_path / "rl.yaml"
    path.write_text(
        "policy: runs/sft\nreward: rlvr\nbeta: 0.01\ngrpo: [loss_type=dr_grpo, top_p=0.9]\n"
    )
    cfg = build_config(RLConfig, load_yaml(path), {"beta": 0.02})
    assert cfg.beta == 0.02  # flags override the file
    assert rl.grpo_overrides(cfg.grpo) == {"loss_type": "dr_grpo", "top_p": 0.9}


# ---------------------------------------------------------------- bad input


def test_reward_prm_needs_a_prm(tiny_policy, tmp_path):
    one_line_error(
        invoke("rl", "--policy", tiny_policy, "--reward", "prm", "--out", tmp_path / "r"),
        "--reward prm needs --prm",
    )
    assert not (tmp_path / "r").exists()


def test_prm_weight_out_of_range(tiny_policy, prm_dir, tmp_path):
    result = invoke(
        "rl",
        "--policy",
        tiny_policy,
        "--prm",
        prm_dir,
        "--prm-weight",
        "1.3",
        "--out",
        tmp_path / "r",
    )
    one_line_error(result, "--prm-weight 1.3")


def test_policy_without_tokenizer(tiny_policy, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_policy / "model" / name).read_bytes())
    one_line_error(
        invoke("rl", "--policy", bare, "--reward", "rlvr", "--out", tmp_path / "r"),
        "--policy",
        "tokenizer",
    )
    assert not (tmp_path / "r").exists()


def test_unknown_grpo_setting(tiny_policy, tmp_path):
    result = invoke(
        "rl",
        "--policy",
        tiny_policy,
        "--reward",
        "rlvr",
        "--grpo",
        "bogus=1",
        "--out",
        tmp_path / "r",
    )
    one_line_error(result, "--grpo bogus=1")
    result = invoke(
        "rl",
        "--policy",
        tiny_policy,
        "--reward",
        "rlvr",
        "--grpo",
        "learning_rate=1",
        "--out",
        tmp_path / "r",
    )
    one_line_error(result, "--learning-rate")


# ---------------------------------------------------------------- two processes


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_policy, prm_dir, tmp_path):
    out = tmp_path / "rl-ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "tdrm_cli",
            "rl",
            "--policy",
            str(tiny_policy),
            "--prm",
            str(prm_dir),
            *TINY,
            "--prm-update",
            "online",
            "--prm-update-every",
            "2",
            "--eval-problems",
            "4",
            "--report-to",
            "none",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["problems_seen"] == 4
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "prm" / "model.safetensors").is_file()
    # Every rank trained its own PRM copy on the gathered rollouts: the copies stay equal.
    updates = metrics["prm_updates"]
    assert updates and all(u["rank_spread"] == 0.0 for u in updates), updates
