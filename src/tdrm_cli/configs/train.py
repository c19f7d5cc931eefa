"""Configs of the training stages: `tdrm sft`, `tdrm train-prm`, `tdrm rl` (and the PRM
target options train-prm and rl's online updates share)."""

from __future__ import annotations

from dataclasses import dataclass

from tdrm_cli.config import (
    ALLOW_PICKLE_HELP,
    TASK_HELP,
    TRUST_REMOTE_CODE_HELP,
    RunConfig,
    _check,
    _one_of,
    listed,
    opt,
)
from tdrm_cli.prm_formats import ONE_FORMAT_HELP, OPTION_HELP, check_choices  # no torch
from tdrm_cli.process_advantage import ADVANTAGES
from tdrm_cli.step_rewards import (
    ONLINE_STEP_REWARDS,
    PRM_REWARD_HELP,
    STEP_REWARDS,
    StepRewardOptions,
)
from tdrm_cli.targets import ONLINE_LOSSES, TARGETS, loss_help, loss_refused
from tdrm_cli.voting import AGGREGATIONS


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
class TargetOptions(StepRewardOptions):
    """What a PRM's step values are fit to, in train-prm and in rl --prm-update online."""

    loss: str = opt("td", f"Target: {loss_help(TARGETS)}.")
    td_lambda: float = opt(0.8, "TD(lambda) mixing: 0 = TD(0), 1 = Monte-Carlo outcome return.")
    n_step: int | None = opt(None, "Use the n-step target with this n instead of TD(lambda).")
    gamma: float = opt(1.0, "Discount in (0, 1]; < 1 pulls early steps of long solutions down.")
    td_mix: float | None = opt(
        None, "alpha: target = alpha*TD + (1-alpha)*MC where MC labels exist (online: none, so TD)."
    )

    def check_targets(
        self,
        losses: tuple[str, ...] = tuple(TARGETS),
        step_rewards: tuple[str, ...] = tuple(STEP_REWARDS),
    ) -> None:
        """`loss` one of `losses`, `step_reward` one of `step_rewards`; the TD settings in
        range, and given only with --loss td."""
        _check(self.loss in losses, loss_refused(self.loss, losses))
        self.check_step_reward(step_rewards, self.loss)
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

    data: str | None = opt(None, "A complete collect or import-data run folder.")
    base: str | None = opt(
        None,
        "Backbone: HF causal LM folder or run folder (default: the data's policy; an "
        "import-data run has none, so it needs --base).",
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
        None,
        "PRM: a train-prm run folder, a tdrm PRM folder or a public PRM's folder (needed by "
        "--reward prm, prm+rlvr; --prm-update online needs tdrm's own).",
    )
    prm_format: str = opt("auto", ONE_FORMAT_HELP)
    prm_option: list[str] = opt([], OPTION_HELP)
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
    prm_reward: str = opt(
        "agg",
        "PRM reward of a completion: "
        + listed(f"{name} ({help})" for name, help in PRM_REWARD_HELP.items())
        + ".",
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
    advantage: str = opt(
        "outcome",
        "Advantage: outcome (one per completion, TRL's GRPO), process (PRM step values on "
        "each step's tokens, group-normalised; the verdict is the last step's reward) or td "
        "(the PRM as critic: each step's TD error, discounted by --gamma, rewards from "
        "--step-reward); process and td "
        "need --prm.",
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
        check_choices([str(self.prm)], [self.prm_format], self.prm_option)
        _check(0.0 <= self.prm_weight <= 1.0, f"--prm-weight {self.prm_weight}: must be in [0, 1]")
        _check(
            self.agg is None or self.agg in AGGREGATIONS,
            f"--agg {self.agg}: expected {listed(AGGREGATIONS)}",
        )
        _one_of(self.prm_reward, PRM_REWARD_HELP, "--prm-reward")
        _check(
            self.agg is None or self.prm_reward == "agg",
            f"--agg needs --prm-reward agg (got --prm-reward {self.prm_reward})",
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
        _one_of(self.advantage, ADVANTAGES, "--advantage")
        _check(
            self.advantage == "outcome" or self.prm is not None,
            f"--advantage {self.advantage} needs --prm",
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
        self.check_targets(ONLINE_LOSSES, ONLINE_STEP_REWARDS)
        _check(
            self.prm_update == "online"
            or (self.loss, self.n_step, self.td_mix) == ("td", None, None),
            "--loss, --n-step and --td-mix need --prm-update online",
        )
        _check(
            self.step_reward == "none" or self.prm_update == "online" or self.advantage == "td",
            f"--step-reward {self.step_reward} needs --prm-update online or --advantage td",
        )
        _check(
            self.eval_every >= 0 and self.eval_problems >= 0,
            "--eval-every and --eval-problems must be >= 0",
        )
        _check(
            self.logging_steps > 0 and self.save_steps > 0,
            "--logging-steps and --save-steps must be > 0",
        )
