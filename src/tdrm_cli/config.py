"""Config machinery: `opt()` fields, checks, limits, YAML <-> dataclass, defaults < YAML < flags.

Every stage has one dataclass (`configs/train.py`: sft, train-prm, rl; `configs/sample.py`:
collect, bon, search, eval; `serve_config.py`, `pipeline.py`). Each field carries its help
text in `metadata["help"]`; the CLI builds every command's options from these fields, so
the dataclass is the single source of truth for `--help`, `--config FILE.yaml` and the
`config.yaml` written into each run folder. Validation lives in `__post_init__` and does
no I/O.
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
from tdrm_cli.tasks import FILE_SUFFIXES, TASKS


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
