"""Stage configs: one dataclass per stage, YAML <-> dataclass, defaults < YAML < flags.

Each field carries its help text in `metadata["help"]`; the CLI builds every stage's
options from these fields, so the dataclass is the single source of truth for
`--help`, `--config FILE.yaml` and the `config.yaml` written into each run folder.
Validation lives in `__post_init__` and does no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.generation import BACKENDS
from tdrm_cli.search.methods import METHODS as SEARCH_METHODS  # the registry; no torch
from tdrm_cli.targets import ONLINE_LOSSES, TARGETS, loss_help, loss_refused
from tdrm_cli.tasks import FILE_SUFFIXES, TASKS
from tdrm_cli.voting import AGGREGATIONS, VOTES


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# The two model-loading trust switches, shared by every stage that loads models and `serve`.
TRUST_REMOTE_CODE_HELP = "Allow model code from the model folder (off by default)."
ALLOW_PICKLE_HELP = (
    "Load pickle weights (.bin/.pt) of a model without safetensors (pickle can run code)."
)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def listed(names: Any) -> str:
    """Choices as prose: 'a', 'a or b', 'a, b or c'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _one_of(value: Any, names: Any, flag: str) -> None:
    _check(value in names, f"{flag} {value}: expected {listed(names)}")


# The choices every stage offers, read from the registries that implement them.
SPLITS = ("train", "test")
TASK_HELP = (
    f"Task: {', '.join(TASKS)} (options as name:key=val,key=val), or a "
    f"{'/'.join(FILE_SUFFIXES)} file."
)
BACKEND_HELP = f"Generation backend: {listed(BACKENDS)}."


# The largest value each count may take, by field name, in every stage: the work and memory
# of a stage grow with these, so an absurd value is refused at once instead of exhausting
# the machine hours later.
LIMITS: dict[str, int] = {
    "problems": 1_000_000,
    "train_problems": 1_000_000,
    "eval_problems": 1_000_000,
    "check_problems": 1_000_000,
    "n": 4096,
    "k": 4096,
    "mc_rollouts": 1024,
    "num_generations": 1024,
    "subsets": 10_000,
    "beam_width": 1024,
    "expand": 1024,
    "max_depth": 1024,
    "max_new_tokens": 131_072,
    "max_step_tokens": 131_072,
    "max_completion_length": 131_072,
    "batch_size": 65_536,
    "prm_batch_size": 65_536,
    "shard_size": 1_000_000,
    "hidden_size": 65_536,
    "layers": 1024,
    "heads": 1024,
    "epochs": 10_000,
    "restarts": 100,
}


def check_numbers(cfg: Any) -> None:
    """Every float option finite, every count in `LIMITS` at most its limit."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag} {value}: must be a finite number")
        limit = LIMITS.get(f.name)
        if limit is not None and isinstance(value, int | float) and value > limit:
            raise UsageError(f"{flag} {shown(value)}: must be at most {limit:,}")


def shown(value: Any, limit: int = 60) -> str:
    """A user's value for an error line: repr'd (newlines escaped) and cut to `limit` chars."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return "a number of over 300 digits"
    text = str(value) if isinstance(value, int | float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RunConfig:
    """Fields every stage has."""

    out: str | None = opt(None, "Run folder to write (default runs/<stage>-<timestamp>).")
    seed: int = opt(0, "Random seed for everything the stage samples.")
    resume: bool = opt(False, "Continue a running/failed run in --out where it stopped.")
    overwrite: bool = opt(False, "Replace a complete run already in --out.")

    def __post_init__(self) -> None:
        _check(not (self.resume and self.overwrite), "--resume and --overwrite exclude each other")
        check_numbers(self)


@dataclass
class SFTConfig(RunConfig):
    """`tdrm sft`: train the tiny from-scratch policy on a built-in task."""

    task: str = opt("arith", TASK_HELP)
    train_problems: int = opt(12800, "Number of generated training problems.")
    epochs: float = opt(2.0, "Passes over the training problems.")
    batch_size: int = opt(64, "Sequences per optimizer step.")
    learning_rate: float = opt(3e-3, "Peak AdamW learning rate (cosine schedule).")
    hidden_size: int = opt(128, "Transformer width.")
    layers: int = opt(4, "Transformer blocks.")
    heads: int = opt(4, "Attention heads.")
    eval_problems: int = opt(200, "Held-out problems for the final greedy pass@1.")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: set by --epochs).")
    save_steps: int = opt(200, "Checkpoint every this many optimizer steps (for --resume).")
    stop_at_pass1: float | None = opt(
        None,
        "Stop training once greedy pass@1 on held-aside train-split problems reaches this "
        "(checked every --check-every steps): a policy of a chosen strength, leaving room for "
        "a verifier.",
    )
    check_every: int = opt(25, "Steps between --stop-at-pass1 checks.")
    init: str | None = opt(
        None,
        "Start from this policy (an sft/rl run or model folder) instead of fresh weights; "
        "--hidden-size/--layers/--heads are then the model's own.",
    )
    check_problems: int = opt(100, "Held-aside train-split problems for --stop-at-pass1.")
    restarts: int = opt(
        0,
        "With --stop-at-pass1: train again from fresh weights (seed + 1000 per restart) up to "
        "this many times while the target is not reached by the last step (a tiny policy's "
        "sudden learning transition comes at a seed-dependent step, or not at all).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.train_problems > 0, "--train-problems must be > 0")
        _check(
            self.stop_at_pass1 is None or 0.0 < self.stop_at_pass1 <= 1.0,
            "--stop-at-pass1 must be in (0, 1]",
        )
        _check(self.check_every > 0, "--check-every must be > 0")
        _check(self.check_problems > 0, "--check-problems must be > 0")
        _check(self.restarts >= 0, "--restarts must be >= 0")
        _check(
            self.restarts == 0 or self.stop_at_pass1 is not None,
            "--restarts needs --stop-at-pass1 (the target that decides a restart)",
        )
        _check(self.epochs > 0, "--epochs must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")
        _check(self.learning_rate > 0, "--learning-rate must be > 0")
        _check(
            min(self.hidden_size, self.layers, self.heads) > 0,
            "--hidden-size, --layers and --heads must be > 0",
        )
        _check(self.hidden_size % self.heads == 0, "--hidden-size must be divisible by --heads")
        _check(self.eval_problems >= 0, "--eval-problems must be >= 0")
        _check(self.max_steps == -1 or self.max_steps > 0, "--max-steps must be > 0 (or -1)")
        _check(self.save_steps > 0, "--save-steps must be > 0")


@dataclass
class CollectConfig(RunConfig):
    """`tdrm collect`: policy rollouts, verifier verdicts, MC step labels, exact step truth."""

    policy: str | None = opt(
        None, "Policy: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("train", f"Which problems to sample: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    n: int = opt(8, "Solutions sampled per problem.")
    mc_rollouts: int = opt(
        4, "Continuations per step prefix for Monte-Carlo step labels (0: none)."
    )
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation batch.")
    backend: str = opt("hf", BACKEND_HELP)
    shard_size: int = opt(25, "Problems per shard written to disk (the unit of --resume).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.n > 0, "--n must be > 0")
        _check(self.mc_rollouts >= 0, "--mc-rollouts must be >= 0")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.max_new_tokens > 0, "--max-new-tokens must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")
        _check(self.shard_size > 0, "--shard-size must be > 0")


@dataclass
class TargetOptions:
    """What a PRM's step values are fit to, in train-prm and in rl --prm-update online."""

    loss: str = opt("td", f"Target: {loss_help(TARGETS)}.")
    td_lambda: float = opt(0.8, "TD(lambda) mixing: 0 = TD(0), 1 = Monte-Carlo outcome return.")
    n_step: int | None = opt(None, "Use the n-step target with this n instead of TD(lambda).")
    gamma: float = opt(1.0, "Discount in (0, 1]; < 1 pulls early steps of long solutions down.")
    td_mix: float | None = opt(
        None, "alpha: target = alpha*TD + (1-alpha)*MC where MC labels exist (online: none, so TD)."
    )

    def check_targets(self, losses: tuple[str, ...] = tuple(TARGETS)) -> None:
        """`loss` one of `losses`; the TD settings in range, and given only with --loss td."""
        _check(self.loss in losses, loss_refused(self.loss, losses))
        _check(0.0 <= self.td_lambda <= 1.0, f"--td-lambda {self.td_lambda}: must be in [0, 1]")
        _check(0.0 < self.gamma <= 1.0, f"--gamma {self.gamma}: must be in (0, 1]")
        _check(self.n_step is None or self.n_step >= 1, "--n-step must be >= 1")
        _check(self.td_mix is None or 0.0 <= self.td_mix <= 1.0, "--td-mix must be in [0, 1]")
        needs_td = f"needs --loss td (got --loss {self.loss})"
        for flag, value in (("--n-step", self.n_step), ("--td-mix", self.td_mix)):
            _check(value is None or self.loss == "td", f"{flag} {needs_td}")


@dataclass
class TrainPRMConfig(TargetOptions, RunConfig):
    """`tdrm train-prm`: fit step values to TD / n-step / MC / exact-truth / outcome targets."""

    data: str | None = opt(None, "A complete collect run folder.")
    base: str | None = opt(
        None, "Backbone: HF causal LM folder or run folder (default: the data's policy)."
    )
    hard: bool = opt(False, "MC labels as hard 0/1 (any continuation reached the answer).")
    target_refresh: int = opt(
        0, "Bootstrap from a frozen copy refreshed every K steps (0: detached online value)."
    )
    epochs: float = opt(3.0, "Passes over the rollouts.")
    batch_size: int = opt(16, "Solutions per optimizer step (global, split across ranks).")
    learning_rate: float = opt(3e-4, "Peak AdamW learning rate.")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: set by --epochs).")
    eval_fraction: float = opt(0.1, "Fraction of problems held out for the metrics.")
    train_problems: int | None = opt(
        None,
        "Train on this many of the non-held-out problems (a seeded draw; default all): for "
        "data-efficiency curves on one collect run.",
    )
    lora_r: int = opt(0, "LoRA rank through peft (0: full fine-tuning).")
    report_to: str = opt("tensorboard", "Trainer logging integration (tensorboard, wandb, none).")
    logging_steps: int = opt(
        10, "Log loss, mean |TD error| and smoothness every this many optimizer steps."
    )
    save_steps: int = opt(200, "Checkpoint every this many optimizer steps (for --resume).")
    agg: str = opt("min", f"Default aggregation recorded with the PRM: {listed(AGGREGATIONS)}.")
    head: str = opt(
        "linear",
        "Value head: linear (on the last token's hidden state) or likelihood (linear plus the "
        "lowest log-probability the backbone's own LM gives any step token so far; needs tied "
        "embeddings).",
    )
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.data is not None, "--data is required")
        self.check_targets()
        _check(self.target_refresh >= 0, "--target-refresh must be >= 0")
        _check(
            self.target_refresh == 0 or self.loss == "td",
            f"--target-refresh needs --loss td (got --loss {self.loss})",
        )
        _check(self.batch_size > 0 and self.epochs > 0, "--batch-size and --epochs must be > 0")
        _check(self.learning_rate > 0, "--learning-rate must be > 0")
        _check(self.max_steps == -1 or self.max_steps > 0, "--max-steps must be > 0 (or -1)")
        _check(0.0 <= self.eval_fraction < 1.0, "--eval-fraction must be in [0, 1)")
        _check(
            self.train_problems is None or self.train_problems > 0, "--train-problems must be > 0"
        )
        _check(self.lora_r >= 0, "--lora-r must be >= 0")
        _check(
            self.head in ("linear", "likelihood"),
            f"--head {self.head}: expected linear or likelihood",
        )
        _check(
            not (self.lora_r and self.head != "linear"),
            "--head likelihood does not combine with --lora-r",
        )
        _check(
            self.logging_steps > 0 and self.save_steps > 0,
            "--logging-steps and --save-steps must be > 0",
        )
        _one_of(self.agg, AGGREGATIONS, "--agg")


@dataclass
class RLConfig(TargetOptions, RunConfig):
    """`tdrm rl`: GRPO (trl.GRPOTrainer) on the policy with verifier, PRM or PRM+verifier rewards."""

    policy: str | None = opt(
        None, "Policy to train: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    prm: str | None = opt(
        None, "PRM: a train-prm run folder or PRM model folder (needed by --reward prm, prm+rlvr)."
    )
    task: str = opt("arith", TASK_HELP)
    problems: int = opt(
        2500, "Training problems in the stream (one pass; the order is fixed by --seed)."
    )
    reward: str = opt(
        "prm+rlvr", "Reward: rlvr (verifier 0/1), prm (aggregated PRM score) or prm+rlvr."
    )
    prm_weight: float = opt(
        0.2, "With prm+rlvr, GRPO reward weights are w for the PRM and 1-w for the verifier."
    )
    agg: str | None = opt(
        None,
        f"Step-score aggregation for the PRM reward: {listed(AGGREGATIONS)}; none = the PRM's own.",
    )
    max_steps: int = opt(-1, "Stop after this many GRPO steps (-1: one pass over --problems).")
    batch_size: int = opt(
        8, "Problems per GRPO step (global); each gets --num-generations completions."
    )
    num_generations: int = opt(8, "Completions sampled per problem (the GRPO group).")
    learning_rate: float = opt(1e-4, "AdamW learning rate of the policy.")
    beta: float = opt(0.0, "KL coefficient against the starting policy (0: no reference model).")
    max_completion_length: int = opt(96, "Token limit per completion.")
    temperature: float = opt(1.0, "Sampling temperature of the GRPO rollouts.")
    scale_rewards: str = opt(
        "group", "Advantage scaling: group, batch or none (GRPO's scale_rewards)."
    )
    use_vllm: bool = opt(False, "Generate with vLLM (GPU only; passed to TRL's use_vllm).")
    grpo: list[str] = opt([], "Any other GRPOConfig setting as key=value, e.g. loss_type=dr_grpo.")
    loss: str = opt("td", f"Target of --prm-update online: {loss_help(ONLINE_LOSSES)}.")
    prm_update: str = opt(
        "off", "off, or online: the PRM learns --loss targets on fresh rollouts (actor-critic)."
    )
    prm_update_every: int = opt(
        10, "With --prm-update online: update the PRM every this many GRPO steps."
    )
    prm_learning_rate: float = opt(1e-4, "AdamW learning rate of the online PRM updates.")
    prm_batch_size: int = opt(16, "Solutions per online PRM gradient step.")
    eval_every: int = opt(
        10, "Greedy pass@1 on held-out problems every this many steps (0: only at start and end)."
    )
    eval_problems: int = opt(
        100, "Held-out (test split) problems for the accuracy curve (0: no evaluation)."
    )
    report_to: str = opt("tensorboard", "Trainer logging integration (tensorboard, wandb, none).")
    logging_steps: int = opt(1, "Log rewards, loss and KL every this many steps.")
    save_steps: int = opt(50, "Checkpoint every this many steps (for --resume).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _check(
            self.reward in ("rlvr", "prm", "prm+rlvr"),
            f"--reward {self.reward}: expected rlvr, prm or prm+rlvr",
        )
        _check(self.prm is not None or self.reward == "rlvr", f"--reward {self.reward} needs --prm")
        _check(0.0 <= self.prm_weight <= 1.0, f"--prm-weight {self.prm_weight}: must be in [0, 1]")
        _check(
            self.agg is None or self.agg in AGGREGATIONS,
            f"--agg {self.agg}: expected {listed(AGGREGATIONS)}",
        )
        _check(self.problems > 0, "--problems must be > 0")
        _check(
            self.batch_size > 0 and self.problems >= self.batch_size,
            "--batch-size must be in 1..--problems",
        )
        _check(
            self.num_generations >= 2,
            "--num-generations must be >= 2 (GRPO compares completions in a group)",
        )
        _check(self.max_steps == -1 or self.max_steps > 0, "--max-steps must be > 0 (or -1)")
        _check(self.learning_rate > 0, "--learning-rate must be > 0")
        _check(self.beta >= 0, "--beta must be >= 0")
        _check(self.max_completion_length > 0, "--max-completion-length must be > 0")
        _check(self.temperature > 0, "--temperature must be > 0 (GRPO needs sampling)")
        _check(
            self.scale_rewards in ("group", "batch", "none"),
            f"--scale-rewards {self.scale_rewards}: expected group, batch or none",
        )
        _check(all("=" in item for item in self.grpo), "--grpo takes key=value")
        _check(
            self.prm_update in ("off", "online"),
            f"--prm-update {self.prm_update}: expected off or online",
        )
        _check(self.prm_update == "off" or self.prm is not None, "--prm-update online needs --prm")
        _check(
            self.prm_update_every > 0 and self.prm_batch_size > 0,
            "--prm-update-every and --prm-batch-size must be > 0",
        )
        _check(self.prm_learning_rate > 0, "--prm-learning-rate must be > 0")
        self.check_targets(ONLINE_LOSSES)
        _check(
            self.prm_update == "online"
            or (self.loss, self.n_step, self.td_mix) == ("td", None, None),
            "--loss, --n-step and --td-mix need --prm-update online",
        )
        _check(
            self.eval_every >= 0 and self.eval_problems >= 0,
            "--eval-every and --eval-problems must be >= 0",
        )
        _check(
            self.logging_steps > 0 and self.save_steps > 0,
            "--logging-steps and --save-steps must be > 0",
        )


@dataclass
class BonConfig(RunConfig):
    """`tdrm bon`: best-of-N with every PRM given, on shared candidates (paired comparison)."""

    policy: str | None = opt(
        None, "Policy to sample from: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    samples: str | None = opt(
        None,
        "Reuse the rollouts of a complete collect run instead of sampling (excludes --policy).",
    )
    prm: list[str] = opt(
        [], "PRM: a train-prm run folder or PRM model folder; repeat for several PRMs."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to sample: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    n: int = opt(
        16, "Candidates per problem (max N); accuracy is reported at N = 1, 2, 4, ... up to it."
    )
    agg: str = opt("min", f"Step-score aggregation: {', '.join(AGGREGATIONS)}, or all.")
    vote: str = opt(
        "weighted",
        f"Vote over candidates: {', '.join(VOTES)}, or all (majority and pass@N are always reported).",
    )
    subsets: int = opt(
        32, "Random candidate subsets per N < max N (accuracy is their mean, with std)."
    )
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    backend: str = opt("hf", BACKEND_HELP)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.policy is not None or self.samples is not None, "--policy or --samples is required"
        )
        _check(
            self.policy is None or self.samples is None,
            "--policy and --samples exclude each other (the samples already name their policy)",
        )
        _check(len(self.prm) > 0, "--prm is required (repeat it to compare several PRMs)")
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.n > 0, "--n must be > 0")
        _one_of(self.agg, (*AGGREGATIONS, "all"), "--agg")
        _one_of(self.vote, (*VOTES, "all"), "--vote")
        _check(self.subsets > 0, "--subsets must be > 0")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.max_new_tokens > 0, "--max-new-tokens must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")


@dataclass
class SearchConfig(RunConfig):
    """`tdrm search`: step-level PRM-guided search (beam, greedy, DVTS)."""

    policy: str | None = opt(
        None, "Policy: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    prm: list[str] = opt(
        [], "PRM: a train-prm run folder or PRM model folder; repeat for several PRMs."
    )
    method: list[str] = opt(
        ["beam"], f"Search method: {', '.join(SEARCH_METHODS)}, or all; repeat for several."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to solve: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    beam_width: int = opt(4, "Prefixes kept per step (beam), or independent subtrees (dvts).")
    expand: int = opt(4, "Next steps sampled from every kept prefix.")
    agg: str = opt("last", f"Prefix / solution score from step scores: {listed(AGGREGATIONS)}.")
    vote: str = opt(
        "weighted",
        f"Answer pick among the finished solutions: {listed(VOTES)} (naive: the best score).",
    )
    max_depth: int = opt(16, "Step limit per solution.")
    max_step_tokens: int = opt(48, "Token limit per step (a step cut there ends its solution).")
    max_new_tokens: int = opt(256, "Token limit per solution (all its steps together).")
    temperature: float = opt(1.0, "Sampling temperature of the expansions.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _check(len(self.prm) > 0, "--prm is required (repeat it to compare several PRMs)")
        for method in self.method:
            _check(
                method in (*SEARCH_METHODS, "all"),
                f"--method {method}: expected {', '.join(SEARCH_METHODS)} or all",
            )
        _check(len(self.method) > 0, "--method needs at least one method")
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.beam_width > 0 and self.expand > 0, "--beam-width and --expand must be > 0")
        _one_of(self.agg, AGGREGATIONS, "--agg")
        _one_of(self.vote, VOTES, "--vote")
        _check(self.max_depth > 0, "--max-depth must be > 0")
        _check(
            self.max_step_tokens > 0 and self.max_new_tokens > 0,
            "--max-step-tokens and --max-new-tokens must be > 0",
        )
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.batch_size > 0, "--batch-size must be > 0")

    @property
    def methods(self) -> list[str]:
        """The methods to run, `all` expanded, duplicates dropped, in the order given."""
        names = [
            m for given in self.method for m in (SEARCH_METHODS if given == "all" else (given,))
        ]
        return list(dict.fromkeys(names))


@dataclass
class EvalConfig(RunConfig):
    """`tdrm eval`: policy accuracy, PRM step quality, and the report of earlier runs."""

    policy: str | None = opt(
        None, "Policy to evaluate: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    prm: list[str] = opt(
        [], "PRM to evaluate on the policy's solutions: a train-prm run or PRM folder; repeatable."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to evaluate on: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    k: int = opt(8, "Samples per problem for maj@k, pass@k and the PRM step metrics.")
    temperature: float = opt(1.0, "Sampling temperature of the k samples.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    steps_file: str | None = opt(
        None, "ProcessBench-format JSONL (problem, steps, label = first wrong step or -1)."
    )
    threshold_fraction: float = opt(
        0.5, "Share of solutions used to pick the first-error threshold (rest: reported)."
    )
    bon: list[str] = opt([], "bon run folders to include in report.md; repeatable.")
    search: list[str] = opt([], "search run folders to include in report.md; repeatable.")
    rl: list[str] = opt(
        [], "rl run folders to include in report.md (accuracy vs problems seen); repeatable."
    )
    policy_likelihood: bool = opt(
        True,
        "Also score the samples with the policy's own likelihood (an untrained baseline row "
        "'policy-likelihood': each step's value is the lowest probability the policy gives "
        "any token of the steps so far; needs tied embeddings).",
    )
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.policy is not None or (self.steps_file is not None and self.prm),
            "--policy is required (or --steps-file with at least one --prm)",
        )
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0 and self.k > 0, "--problems and --k must be > 0")
        _check(0.0 < self.threshold_fraction < 1.0, "--threshold-fraction must be in (0, 1)")
        _check(
            self.max_new_tokens > 0 and self.batch_size > 0,
            "--max-new-tokens and --batch-size must be > 0",
        )


# ---------------------------------------------------------------- YAML and merging


def field_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a field's annotation (int -> float is allowed)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], where) for v in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise UsageError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float) and (
        isinstance(value, bool) or not isinstance(value, annotation)
    ):
        raise UsageError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is str and not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"{where}: expected a string, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: an integer of more than 4300 digits
        first = first_line(e)[:200]
        raise UsageError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def build_config(
    cls: type, yaml_values: dict[str, Any] | None, flags: dict[str, Any], source: str = "config"
):
    """Defaults < YAML < flags. Unknown YAML keys are an error naming key and file."""
    hints = resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UsageError(f"{source}: unknown key '{key}' for {cls.__name__}")
        values[name] = _coerce(value, hints[name], f"{source}: key '{key}'")
    from_yaml = set(values)
    for name, value in flags.items():
        if value is not None and not (isinstance(value, list | tuple) and len(value) == 0):
            values[name] = list(value) if isinstance(value, tuple) else value
            from_yaml.discard(name)
    try:
        return cls(**values)
    except UsageError as e:  # a bad value that came from the file: name the file too
        flag = str(e).split(" ", 1)[0].rstrip(":,")
        if flag.startswith("--") and flag[2:].replace("-", "_") in from_yaml:
            raise UsageError(f"{source}: {e}") from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
