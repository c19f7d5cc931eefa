"""Stage configs: one dataclass per stage, YAML <-> dataclass, defaults < YAML < flags.

Each field carries its help text in `metadata["help"]`; the CLI builds every stage's
options from these fields, so the dataclass is the single source of truth for
`--help`, `--config FILE.yaml` and the `config.yaml` written into each run folder.
Validation lives in `__post_init__` and does no I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdrm_cli.errors import UsageError


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


@dataclass
class RunConfig:
    """Fields every stage has."""

    out: str | None = opt(None, "Run folder to write (default runs/<stage>-<timestamp>).")
    seed: int = opt(0, "Random seed for everything the stage samples.")
    resume: bool = opt(False, "Continue a running/failed run in --out where it stopped.")
    overwrite: bool = opt(False, "Replace a complete run already in --out.")

    def __post_init__(self) -> None:
        _check(not (self.resume and self.overwrite), "--resume and --overwrite exclude each other")


@dataclass
class SFTConfig(RunConfig):
    """`tdrm sft`: train the tiny from-scratch policy on a built-in task."""

    task: str = opt("arith", "Task spec: a name from the registry, options as name:key=val,key=val.")
    train_problems: int = opt(20000, "Number of generated training problems.")
    epochs: float = opt(2.0, "Passes over the training problems.")
    batch_size: int = opt(64, "Sequences per optimizer step.")
    learning_rate: float = opt(3e-3, "Peak AdamW learning rate (cosine schedule).")
    hidden_size: int = opt(128, "Transformer width.")
    layers: int = opt(4, "Transformer blocks.")
    heads: int = opt(4, "Attention heads.")
    eval_problems: int = opt(200, "Held-out problems for the final greedy pass@1.")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: set by --epochs).")
    save_steps: int = opt(200, "Checkpoint every this many optimizer steps (for --resume).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.train_problems > 0, "--train-problems must be > 0")
        _check(self.epochs > 0, "--epochs must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")
        _check(self.learning_rate > 0, "--learning-rate must be > 0")
        _check(self.hidden_size % self.heads == 0, "--hidden-size must be divisible by --heads")
        _check(self.eval_problems >= 0, "--eval-problems must be >= 0")


@dataclass
class CollectConfig(RunConfig):
    """`tdrm collect`: policy rollouts, verifier verdicts, MC step labels, exact step truth."""

    policy: str | None = opt(None, "Policy: a run folder (sft/rl), a local HF model folder, or a hub id.")
    task: str = opt("arith", "Task spec: a name from the registry, options as name:key=val,key=val.")
    split: str = opt("train", "Which problems to sample: train or test.")
    problems: int = opt(200, "Number of problems.")
    n: int = opt(8, "Solutions sampled per problem.")
    mc_rollouts: int = opt(4, "Continuations per step prefix for Monte-Carlo step labels (0: none).")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation batch.")
    backend: str = opt("hf", "Generation backend: hf or vllm.")
    shard_size: int = opt(25, "Problems per shard written to disk (the unit of --resume).")
    trust_remote_code: bool = opt(False, "Allow model code from the model folder (off by default).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _check(self.split in ("train", "test"), f"--split {self.split}: expected train or test")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.n > 0, "--n must be > 0")
        _check(self.mc_rollouts >= 0, "--mc-rollouts must be >= 0")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.max_new_tokens > 0, "--max-new-tokens must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")
        _check(self.shard_size > 0, "--shard-size must be > 0")


@dataclass
class TrainPRMConfig(RunConfig):
    """`tdrm train-prm`: fit step values to TD / n-step / MC / outcome targets."""

    data: str | None = opt(None, "A complete collect run folder.")
    base: str | None = opt(None, "Backbone: HF causal LM folder or run folder (default: the data's policy).")
    loss: str = opt("td", "Target: td, mc (Monte-Carlo step labels) or outcome (verdict at every step).")
    td_lambda: float = opt(0.8, "TD(lambda) mixing: 0 = TD(0), 1 = Monte-Carlo outcome return.")
    n_step: int | None = opt(None, "Use the n-step target with this n instead of TD(lambda).")
    gamma: float = opt(1.0, "Discount in (0, 1]; < 1 pulls early steps of long solutions down.")
    td_mix: float | None = opt(None, "alpha: target = alpha*TD + (1-alpha)*MC where MC labels exist.")
    hard: bool = opt(False, "MC labels as hard 0/1 (any continuation reached the answer).")
    target_refresh: int = opt(0, "Bootstrap from a frozen copy refreshed every K steps (0: detached online value).")
    epochs: float = opt(3.0, "Passes over the rollouts.")
    batch_size: int = opt(16, "Solutions per optimizer step (global, split across ranks).")
    learning_rate: float = opt(3e-4, "Peak AdamW learning rate.")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: set by --epochs).")
    eval_fraction: float = opt(0.1, "Fraction of problems held out for the metrics.")
    lora_r: int = opt(0, "LoRA rank through peft (0: full fine-tuning).")
    report_to: str = opt("tensorboard", "Trainer logging integration (tensorboard, wandb, none).")
    logging_steps: int = opt(10, "Log loss, mean |TD error| and smoothness every this many optimizer steps.")
    save_steps: int = opt(200, "Checkpoint every this many optimizer steps (for --resume).")
    agg: str = opt("min", "Default aggregation recorded with the PRM: min, last, prod or mean.")
    trust_remote_code: bool = opt(False, "Allow model code from the model folder (off by default).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.data is not None, "--data is required")
        _check(self.loss in ("td", "mc", "outcome"), f"--loss {self.loss}: expected td, mc or outcome")
        _check(0.0 <= self.td_lambda <= 1.0, f"--td-lambda {self.td_lambda}: must be in [0, 1]")
        _check(0.0 < self.gamma <= 1.0, f"--gamma {self.gamma}: must be in (0, 1]")
        _check(self.n_step is None or self.n_step >= 1, "--n-step must be >= 1")
        _check(self.td_mix is None or 0.0 <= self.td_mix <= 1.0, "--td-mix must be in [0, 1]")
        _check(self.target_refresh >= 0, "--target-refresh must be >= 0")
        for flag, given in (("--n-step", self.n_step is not None), ("--td-mix", self.td_mix is not None),
                            ("--target-refresh", self.target_refresh > 0)):
            _check(not given or self.loss == "td", f"{flag} needs --loss td (got --loss {self.loss})")
        _check(self.batch_size > 0 and self.epochs > 0, "--batch-size and --epochs must be > 0")
        _check(self.learning_rate > 0, "--learning-rate must be > 0")
        _check(0.0 <= self.eval_fraction < 1.0, "--eval-fraction must be in [0, 1)")
        _check(self.lora_r >= 0, "--lora-r must be >= 0")
        _check(self.logging_steps > 0 and self.save_steps > 0, "--logging-steps and --save-steps must be > 0")
        _check(self.agg in ("min", "last", "prod", "mean"), f"--agg {self.agg}: expected min, last, prod or mean")


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
    if annotation in (int, float) and (isinstance(value, bool) or not isinstance(value, annotation)):
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
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def build_config(cls: type, yaml_values: dict[str, Any] | None, flags: dict[str, Any], source: str = "config"):
    """Defaults < YAML < flags. Unknown YAML keys are an error naming key and file."""
    hints = resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UsageError(f"{source}: unknown key '{key}' for {cls.__name__}")
        values[name] = _coerce(value, hints[name], f"{source}: key '{key}'")
    for name, value in flags.items():
        if value is not None and not (isinstance(value, list | tuple) and len(value) == 0):
            values[name] = list(value) if isinstance(value, tuple) else value
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
