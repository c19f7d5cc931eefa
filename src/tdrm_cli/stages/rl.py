"""`tdrm rl`: GRPO on the policy with verifier, PRM or PRM+verifier rewards.

setup (policy, problem stream, reward callables, optional PRM) -> train (`trl.GRPOTrainer`,
so accelerate/DeepSpeed, vLLM generation, checkpoints, `--resume` and `--report-to` come
from the library) -> save (`model/`, `metrics.json`, `eval_curve.json` + PNG).

- Rewards (`rewards.py`): `--reward rlvr` trains on the verifier alone, `prm` on the PRM's
  aggregated step score (the verifier is still computed, with weight 0, so its mean is
  logged), `prm+rlvr` on both with GRPO `reward_weights` [w, 1-w] (`--prm-weight w`).
  `--prm-reward` reads the PRM's score: `agg` (every step, `--agg`) or `tdrm-reference`.
- `--advantage` (`process_advantage.py`, `process_grpo.py`): `outcome` is TRL's GRPO; `process`
  and `td` put the PRM's step values on each step's tokens (the verdict as the last step's
  reward); the `--reward` mix is then only what `reward` logs.
- Problem stream: the task's first `--problems` train problems, shuffled once by `--seed`
  and fed in that order (TRL's own shuffle is off). Runs with different rewards therefore
  see the same problems in the same order, and step s has seen s x `--batch-size` problems.
- Data efficiency: greedy pass@1 on held-out (test split) problems at the start, every
  `--eval-every` steps and at the end -> `eval_curve.json` (problems seen vs accuracy;
  `rl_callbacks.AccuracyCurve`).
- `--prm-update online`: every `--prm-update-every` steps the PRM takes train-prm's loss
  steps (`--loss td` or `outcome`, `--td-lambda`, `--n-step`, `--gamma`) on the policy's
  fresh completions with the verifier verdict as terminal reward (the actor-critic loop);
  the updated PRM is saved to `prm/` in the run folder.

Multi-process: `accelerate launch -m tdrm_cli rl ...` on GPUs, `torchrun --nproc_per_node N
-m tdrm_cli rl ...` on CPUs (DDP over gloo). `--batch-size` is global; every rank scores its
own completions and only rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdrm_cli import plots
from tdrm_cli.checkpoints import (
    NoFinalCheckpoint,
    StepCounter,
    StopOnNonFinite,
    check_finite,
    last_checkpoint,
    steps_run,
)
from tdrm_cli.configs.train import RLConfig
from tdrm_cli.console import console, log
from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.prm import PRM
from tdrm_cli.rewards import PRM_REWARDS, OnlinePRMUpdate, VerifierReward
from tdrm_cli.rl_callbacks import CURVE, ONLINE_PRM_STATE, AccuracyCurve, SaveCritic, resume_state
from tdrm_cli.runs import (
    Run,
    atomic_write_json,
    open_run,
    rank,
    resolve_model,
    save_model,
    world_size,
)
from tdrm_cli.steps import (
    DEFAULT_SEPARATOR,
    POLICY_META,
    build_prompt,
    read_policy_meta,
)
from tdrm_cli.targets import Targets
from tdrm_cli.tasks import Problem, Task, load_task

CURVE_PNG = "eval_curve.png"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)

# --reward -> [(reward name, weight)] given --prm-weight w. Under `prm` the verifier rides
# along with weight 0: its mean (training accuracy) is logged for every reward.
REWARD_MIXES: dict[str, Callable[[float], list[tuple[str, float]]]] = {
    "rlvr": lambda w: [("verifier", 1.0)],
    "prm": lambda w: [("prm", 1.0), ("verifier", 0.0)],
    "prm+rlvr": lambda w: [("prm", w), ("verifier", 1.0 - w)],
}

# GRPOConfig settings `tdrm rl` sets itself (-> the flag to use); `--grpo` may set any other.
MANAGED = dict(
    learning_rate="--learning-rate", beta="--beta", num_generations="--num-generations",
    max_completion_length="--max-completion-length", temperature="--temperature",
    scale_rewards="--scale-rewards", use_vllm="--use-vllm", reward_weights="--reward/--prm-weight",
    max_steps="--max-steps", per_device_train_batch_size="--batch-size", seed="--seed",
    output_dir="--out", report_to="--report-to", logging_steps="--logging-steps",
    save_steps="--save-steps", trust_remote_code="--trust-remote-code",
    num_train_epochs="--problems", shuffle_dataset="--seed (fixed problem stream)",
)  # fmt: skip


# ---------------------------------------------------------------- setup


def load_policy_tokenizer(cfg: RLConfig, model_dir: str):
    # The project's loader: tdrm's character tokenizer stays intact (see generation.py).
    from tdrm_cli.generation import load_tokenizer

    # transformers 5 quietly builds an empty tokenizer for a folder without tokenizer files
    if Path(model_dir).is_dir() and not any(
        (Path(model_dir) / f).is_file() for f in TOKENIZER_FILES
    ):
        raise UsageError(f"--policy {cfg.policy}: no tokenizer files in {model_dir}")
    try:
        tokenizer = load_tokenizer(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # OSError, ValueError, TypeError... depending on what is missing
        raise UsageError(f"--policy {cfg.policy}: no usable tokenizer ({first_line(e)})") from None
    if len(tokenizer) < 2:
        raise UsageError(f"--policy {cfg.policy}: no usable tokenizer (empty vocabulary)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy_model(cfg: RLConfig, model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    from tdrm_cli.generation import from_pretrained, weights_kwargs

    model, _ = from_pretrained(  # float32; GPUs add bf16 autocast
        AutoModelForCausalLM,
        model_dir,
        f"--policy {cfg.policy}",
        dtype=torch.float32,
        trust_remote_code=cfg.trust_remote_code,
        **weights_kwargs(model_dir, cfg.allow_pickle),
    )
    return model


def problem_stream(task: Task, n: int, seed: int) -> list[Problem]:
    """The first `n` train problems in an order fixed by `seed` (the same for every reward)."""
    problems = task.problems("train", n)
    random.Random(seed).shuffle(problems)
    return problems


def build_dataset(problems: list[Problem], tokenizer: Any, meta: dict[str, Any]):
    """GRPO's `prompt` column plus what the rewards read: `problem_id`, `question`, `gold`."""
    from datasets import Dataset

    prompts = [build_prompt(tokenizer, p.question, meta) for p in problems]
    return Dataset.from_dict(
        {
            "prompt": prompts,
            "problem_id": [p.id for p in problems],
            "question": [p.question for p in problems],
            "gold": [p.gold for p in problems],
        }
    )


def load_reward_prm(cfg: RLConfig) -> PRM | None:
    """The PRM when a reward or the online update needs it, on this rank's device."""
    import torch

    if cfg.prm is None:
        return None
    if cfg.reward == "rlvr" and cfg.prm_update == "off" and cfg.advantage == "outcome":
        log(f"--prm {cfg.prm}: unused by --reward rlvr without --prm-update online; ignored")
        return None
    from tdrm_cli.prm_formats import load_scoring_prms, require_tdrm

    if cfg.prm_update == "online":
        require_tdrm(cfg.prm, cfg.prm_format, "--prm-update online trains tdrm's value head")
    # float32 when the PRM is trained online: bf16 AdamW steps on small values are too coarse
    dtype = torch.float32 if cfg.prm_update == "online" else None
    (prm,) = load_scoring_prms(
        [cfg.prm], [cfg.prm_format], cfg.prm_option, "prm", dtype, cfg.trust_remote_code,
        cfg.allow_pickle,
    )  # fmt: skip
    if torch.cuda.is_available():  # the PRM loads on cuda:0; every rank wants its own GPU
        prm.model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    return prm


def reward_functions(cfg: RLConfig, task: Task, separator: str, prm: PRM | None, observer=None):
    """(reward callables, GRPO reward_weights) for `--reward`."""
    make = {
        "verifier": lambda: VerifierReward(task, separator, observer=observer),
        "prm": lambda: PRM_REWARDS[cfg.prm_reward](prm, cfg.agg, task),
    }
    mix = REWARD_MIXES[cfg.reward](cfg.prm_weight)
    return [make[name]() for name, _ in mix], [weight for _, weight in mix]


def grpo_overrides(items: list[str]) -> dict[str, Any]:
    """`--grpo key=value` items as GRPOConfig keyword arguments (values parsed as YAML)."""
    import yaml
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in known:
            raise UsageError(f"--grpo {item}: GRPOConfig has no setting '{key}'")
        if key in MANAGED:
            raise UsageError(f"--grpo {item}: set by tdrm rl itself (use {MANAGED[key]})")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def grpo_config(cfg: RLConfig, run: Run, weights: list[float], report_to: list[str], extra: dict):
    import torch
    from trl import GRPOConfig

    completions = cfg.batch_size * cfg.num_generations
    if completions % world_size():
        raise UsageError(
            f"--batch-size x --num-generations = {completions}: not divisible by {world_size()} processes"
        )
    cuda = torch.cuda.is_available()
    settings = dict(
        output_dir=str(run.path / "checkpoints"), per_device_train_batch_size=completions // world_size(),
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, learning_rate=cfg.learning_rate, beta=cfg.beta,
        scale_rewards=cfg.scale_rewards, use_vllm=cfg.use_vllm, reward_weights=weights,
        num_train_epochs=1, max_steps=cfg.max_steps,
        shuffle_dataset=False,  # the stream order is ours (problem_stream)
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, report_to=report_to, seed=cfg.seed, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        activation_checkpointing=cuda,  # TRL's default saves GPU memory; on the CPU it only costs time
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        trust_remote_code=cfg.trust_remote_code,
        disable_tqdm=True,  # the rich bar of training_bar instead
    )  # fmt: skip
    try:
        return GRPOConfig(**{**settings, **extra})
    except (ValueError, TypeError) as e:
        raise UsageError(f"GRPO settings: {first_line(e)}") from None


def problems_per_step(args) -> float:
    """Problems consumed by one optimizer step (each gets `num_generations` completions)."""
    completions = args.per_device_train_batch_size * world_size() * args.gradient_accumulation_steps
    return completions / (args.num_generations * args.num_iterations)


def reporting(cfg: RLConfig, run: Run):
    """Trainer `report_to`, callbacks, and a SummaryWriter on the run's `logs/` (rank 0)."""
    wanted = [r.strip() for r in cfg.report_to.split(",") if r.strip() and r.strip() != "none"]
    callbacks, writer = [], None
    if "tensorboard" in wanted:
        wanted.remove("tensorboard")
        if rank() == 0:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            writer = SummaryWriter(log_dir=str(run.path / "logs"))
            callbacks.append(TensorBoardCallback(writer))
    return wanted or ["none"], callbacks, writer


# ---------------------------------------------------------------- train, save


def online_learner(cfg: RLConfig, prm: PRM | None, writer: Any) -> OnlinePRMUpdate | None:
    if cfg.prm_update != "online":
        return None
    return OnlinePRMUpdate(
        prm, every=cfg.prm_update_every, learning_rate=cfg.prm_learning_rate, batch_size=cfg.prm_batch_size,
        targets=Targets.from_config(cfg), seed=cfg.seed, writer=writer,
    )  # fmt: skip


def accuracy_curve(
    cfg: RLConfig, task: Task, tokenizer, meta: dict, per_step: float, run: Run, writer, points
):
    """The held-out accuracy callback, or None with --eval-problems 0."""
    if not cfg.eval_problems:
        return None
    held_out = task.problems("test", cfg.eval_problems)
    return AccuracyCurve(
        task=task, tokenizer=tokenizer, problems=held_out,
        prompts=[build_prompt(tokenizer, p.question, meta) for p in held_out],
        separator=meta.get("separator") or DEFAULT_SEPARATOR, max_new_tokens=cfg.max_completion_length,
        every=cfg.eval_every, per_step=per_step, path=run.path / CURVE if rank() == 0 else None,
        writer=writer, points=points,
    )  # fmt: skip


RL_BAR = {"reward": "reward", "rewards/verifier/mean": "accuracy", "kl": "KL"}
"""What the rl progress bar shows of every log: mean reward, training accuracy (the
verifier's mean reward, logged for every --reward) and KL to the reference policy."""


def run(cfg: RLConfig) -> Path:
    from transformers import set_seed

    from tdrm_cli.process_grpo import trainer_factory
    from tdrm_cli.step_rewards import StepRewards
    from tdrm_cli.trainer_bar import training_bar

    task = load_task(cfg.task)
    policy_dir, _ = resolve_model(cfg.policy, "policy")
    tokenizer = load_policy_tokenizer(cfg, policy_dir)
    meta = read_policy_meta(policy_dir)
    separator = meta.get("separator") or DEFAULT_SEPARATOR
    extra = grpo_overrides(cfg.grpo)
    if cfg.use_vllm:
        check_vllm()
    if world_size() > 1 and cfg.out is None:
        raise UsageError(
            "--out is required with several processes (every rank must write the same folder)"
        )
    prm = load_reward_prm(cfg)
    dataset = build_dataset(problem_stream(task, cfg.problems, cfg.seed), tokenizer, meta)

    with open_run("rl", cfg) as run:
        run.add_input("policy", cfg.policy)
        if prm is not None:
            run.add_input("prm", cfg.prm)
        set_seed(cfg.seed)
        model = load_policy_model(cfg, policy_dir)
        report_to, callbacks, writer = reporting(cfg, run)
        learner = online_learner(cfg, prm, writer)
        make_trainer, reward_prm = trainer_factory(
            cfg.advantage, prm, cfg.gamma, StepRewards.from_config(cfg)
        )
        funcs, weights = reward_functions(
            cfg, task, separator, reward_prm, learner and learner.observe
        )
        args = grpo_config(cfg, run, weights, report_to, extra)
        required = (ONLINE_PRM_STATE,) if learner is not None else ()
        checkpoint = last_checkpoint(run.path / "checkpoints", required) if cfg.resume else None
        points = resume_state(run, checkpoint, learner)
        curve = accuracy_curve(
            cfg, task, tokenizer, meta, problems_per_step(args), run, writer, points
        )
        callbacks[:0] = [
            c for c in (curve, learner, learner and SaveCritic(learner)) if c is not None
        ]
        mix = ", ".join(f"{f.__name__} {w:g}" for f, w in zip(funcs, weights, strict=True))
        log(
            f"rl: reward {mix}, {cfg.advantage} advantage; {len(dataset)} problems x {cfg.num_generations} completions, "
            f"{problems_per_step(args):g} problems/step, {world_size()} process(es)"
        )
        trainer = make_trainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[*callbacks, NoFinalCheckpoint(), StopOnNonFinite(), StepCounter()],
        )
        with training_bar(trainer, "rl", RL_BAR):
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.accelerator.wait_for_everyone()  # no rank may still write a checkpoint when rank 0 cleans up
        check_finite(trainer.accelerator.unwrap_model(trainer.model), result.training_loss, "rl")
        if learner is not None:
            check_finite(learner.prm.model, None, "rl (online PRM)")
        if rank() == 0:
            save_policy(trainer, tokenizer, policy_dir, run.path / "model")
            finish(cfg, run, trainer, result, curve, learner)
        if writer is not None:
            writer.close()
    return run.path


def save_policy(trainer, tokenizer, policy_dir: str, out: Path) -> None:
    """Safetensors policy + tokenizer + the starting policy's tdrm_policy.json (no pickles)."""
    save_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out)
    if (Path(policy_dir) / POLICY_META).is_file():
        shutil.copy(Path(policy_dir) / POLICY_META, out / POLICY_META)


def summarize(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Run means of the per-step logs that compare rewards (median for the step time)."""
    names = {
        "rewards/verifier/mean": "train_accuracy",
        "rewards/prm/mean": "train_prm_reward",
        "reward": "train_reward",
        "kl": "kl",
        "completions/mean_length": "completion_length",
        "step_time": "step_time_s",
    }
    out = {}
    for key, name in names.items():
        values = [row[key] for row in log_history if row.get(key) is not None]
        if values:
            out[name] = round(
                (statistics.median if key == "step_time" else statistics.mean)(values), 4
            )
    return out


def finish(cfg: RLConfig, run: Run, trainer, result, curve: AccuracyCurve | None, learner) -> None:
    """Updated PRM, accuracy curve PNG, metrics.json; marks the run complete."""
    metrics: dict[str, Any] = {
        "reward": cfg.reward,
        "advantage": cfg.advantage,
        "train_steps": int(result.global_step),
        "steps_run": steps_run(trainer),
        "problems_seen": round(result.global_step * problems_per_step(trainer.args)),
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 1),
        "world_size": world_size(),
        **summarize(trainer.state.log_history),
    }
    atomic_write_json(run.path / "log_history.json", trainer.state.log_history)
    if learner is not None:
        learner.prm.meta = {
            **learner.prm.meta,
            "online_updates": len(learner.history),
            "online_rl_run": str(run.path),
        }
        learner.prm.save(run.path / "prm")
        metrics["prm_updates"] = learner.history
    if curve is not None and curve.points:
        label = cfg.reward if cfg.reward == "rlvr" else f"{cfg.reward} ({Path(cfg.prm).name})"
        label += "" if cfg.advantage == "outcome" else f", {cfg.advantage} advantage"
        plots.rl_accuracy_vs_problems(
            {label: curve.points}, run.path / CURVE_PNG, f"tdrm rl on {cfg.task}: held-out accuracy"
        )
        metrics.update(
            {
                "pass@1_start": curve.points[0]["accuracy"],
                "pass@1": curve.points[-1]["accuracy"],
                "eval_problems": len(curve.problems),
            }
        )
    shutil.rmtree(run.path / "checkpoints", ignore_errors=True)
    atomic_write_json(run.path / "metrics.json", metrics)
    run.complete(metrics)
    console.print(
        f"[bold]rl[/] {metrics['train_steps']} steps, {metrics['problems_seen']} problems; held-out "
        f"pass@1 {metrics.get('pass@1_start', 'n/a')} -> {metrics.get('pass@1', 'n/a')}; "
        f"train accuracy {metrics.get('train_accuracy', 'n/a')}"
    )


def check_vllm() -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise UsageError("--use-vllm: vllm is not installed (pip install 'tdrm-cli[vllm]')")
    if not torch.cuda.is_available():
        raise UsageError("--use-vllm: needs a CUDA GPU (leave it off on the CPU)")
