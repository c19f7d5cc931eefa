"""Public PRM formats: one adapter per family behind tdrm's PRM interface (see `base`).

`FORMATS` maps a format's name to its registry entry, most specific detection first: the
first whose `detect(folder)` holds scores a folder unless `--prm-format` names one. A
train-prm run or a folder with `tdrm_prm.json` is tdrm's own PRM (`prm.load_prm`).

This module imports no torch: configs check format names and options against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats import math_shepherd, qwen_prm, rlhflow, skywork, tdrm, tdrm_paper, trl
from tdrm_cli.prm_formats.base import Folder, Format, check_options, read_folder

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        tdrm.FORMAT,
        trl.FORMAT,
        skywork.FORMAT,  # head weights v_head.summary.*
        qwen_prm.FORMAT,  # head weights score.0.* / score.2.*
        tdrm_paper.FORMAT,  # a one-label *ForSequenceClassification
        rlhflow.FORMAT,  # before math-shepherd: its model card cites the Math-Shepherd paper
        math_shepherd.FORMAT,
    )
}
AUTO = "auto"
SHARED_OPTIONS = ("separator", "agg")
"""Options every public format takes (how tdrm splits a completion into steps, and the
default aggregation); tdrm's own PRM takes none: its tdrm_prm.json says both."""

FORMAT_HELP = (
    f"PRM format: {', '.join(FORMATS)} or {AUTO} (detect it from the folder; the default). "
    "Once: for every --prm; or once per --prm, in order."
)
ONE_FORMAT_HELP = f"PRM format: {', '.join(FORMATS)} or {AUTO} (detect it from the folder)."
OPTION_HELP = (
    "KEY=VALUE option of the PRM's format (repeatable; \\n, \\t and \\\\ are unescaped): for "
    "every --prm whose format takes KEY; N:KEY=VALUE for the N-th --prm (from 1) only."
)


def takes(fmt: Format) -> set[str]:
    """The `--prm-option` keys a format accepts."""
    return set() if fmt.name == "tdrm" else {*fmt.options, *SHARED_OPTIONS}


def detect(folder: Folder) -> Format | None:
    """The first format whose detection claims the folder, or None."""
    return next((f for f in FORMATS.values() if f.detect(folder)), None)


# ---------------------------------------------------------------- options (no I/O)


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        pair = value[i : i + 2]
        if pair in ("\\n", "\\t", "\\\\"):
            out.append({"\\n": "\n", "\\t": "\t", "\\\\": "\\"}[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


@dataclass
class Option:
    key: str
    value: str
    prm: int | None = None
    """The --prm (0-based) it is for; None: every --prm whose format takes it."""


def parse_options(given: Sequence[str], prms: int) -> list[Option]:
    options = []
    for text in given:
        pair, prm = text, None
        head, colon, rest = text.partition(":")
        if colon and head.isdigit() and "=" in rest:
            pair, prm = rest, int(head) - 1
            if not 0 <= prm < prms:
                raise UsageError(f"--prm-option {text}: there is no --prm number {head}")
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--prm-option {text}: expected KEY=VALUE (or N:KEY=VALUE)")
        options.append(Option(key.strip(), unescape(value), prm))
    return options


def check_choices(prms: Sequence[str], formats: Sequence[str], options: Sequence[str]) -> None:
    """What a stage config checks in `__post_init__`: format names, their count, option syntax."""
    for name in formats:
        if name != AUTO and name not in FORMATS:
            raise UsageError(f"--prm-format {name}: expected {', '.join(FORMATS)} or {AUTO}")
    if len(formats) not in (0, 1, len(prms)):
        raise UsageError(
            f"--prm-format is given {len(formats)} times for {len(prms)} --prm: give it once "
            "(for all) or once per --prm"
        )
    parse_options(options, len(prms))


def forced(formats: Sequence[str], index: int) -> str | None:
    name = formats[0] if len(formats) == 1 else formats[index] if formats else AUTO
    return None if name == AUTO else name


# ---------------------------------------------------------------- resolving and loading


def resolve(path_or_run: str | Path, role: str = "prm", fmt: str | None = None):
    """(format, model folder, `Folder` or None for tdrm's own) without loading weights."""
    from tdrm_cli.prm import PRM_META
    from tdrm_cli.runs import is_run_dir, resolve_model

    path = Path(path_or_run)
    model_dir, _ = resolve_model(path, role, ("train-prm",))
    if not Path(model_dir).is_dir():
        raise UsageError(
            f"--{role} {path_or_run}: a hub id; download the PRM first "
            f"(hf download {path_or_run} --local-dir DIR) and pass DIR"
        )
    if is_run_dir(path) or (fmt in (None, "tdrm") and (Path(model_dir) / PRM_META).is_file()):
        if fmt not in (None, "tdrm"):
            raise UsageError(f"--prm-format {fmt}: --{role} {path} is a PRM trained by tdrm")
        return FORMATS["tdrm"], model_dir, None
    if fmt == "tdrm":
        return FORMATS["tdrm"], model_dir, None  # load_prm says what is missing
    folder = read_folder(model_dir, f"--{role}")
    chosen = FORMATS[fmt] if fmt is not None else detect(folder)
    if chosen is None:
        others = ", ".join(n for n in FORMATS if n != "tdrm")
        raise UsageError(
            f"--{role} {path}: no {PRM_META} (not a PRM trained by tdrm train-prm) and no "
            f"public PRM format matches it; name one with --prm-format ({others})"
        )
    return chosen, model_dir, folder


def options_for(fmt: Format, options: Sequence[Option], index: int) -> dict[str, str]:
    """The options meant for the `index`-th --prm: general ones its format takes, and its own
    (which it must take)."""
    mine = {o.key: o.value for o in options if o.prm is None and o.key in takes(fmt)}
    own = {o.key: o.value for o in options if o.prm == index}
    if own and fmt.name == "tdrm":
        raise UsageError(
            f"--prm-option {index + 1}:{next(iter(own))}: format 'tdrm' takes no options"
        )
    return check_options(fmt, {**mine, **own}, "--prm-option") if own or mine else {}


def load_scoring_prm(
    path_or_run: str | Path,
    role: str = "prm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    fmt: str | None = None,
    options: dict[str, str] | None = None,
):
    """A scorer with tdrm's PRM interface for a train-prm run, a tdrm PRM folder or a public
    PRM's folder (its format detected, or `fmt`). `dtype` defaults to bfloat16 on a GPU and
    float32 on the CPU."""
    resolved = resolve(path_or_run, role, fmt)
    return load_resolved(
        resolved, path_or_run, options, role, dtype, trust_remote_code, allow_pickle
    )


def load_resolved(
    resolved: tuple[Format, str, Folder | None],
    path_or_run: str | Path,
    options: dict[str, str] | None,
    role: str,
    dtype: Any,
    trust_remote_code: bool,
    allow_pickle: bool,
):
    """`load_scoring_prm` for what `resolve` already gave (the folder is read once)."""
    import torch

    from tdrm_cli.generation import weights_kwargs
    from tdrm_cli.prm import load_prm

    chosen, model_dir, folder = resolved
    options = dict(options or {})
    if folder is None:
        if options:
            raise UsageError(f"--prm-option {next(iter(options))}: format 'tdrm' takes no options")
        return load_prm(path_or_run, role, dtype, trust_remote_code, allow_pickle)
    check_options(chosen, options, "--prm-option")
    weights_kwargs(model_dir, allow_pickle)  # refuses pickle-only folders unless allowed
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    return chosen.load(folder, options, dtype, device, trust_remote_code)


def load_scoring_prms(
    paths: Sequence[str | Path],
    formats: Sequence[str] = (),
    options: Sequence[str] = (),
    role: str = "prm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> list[Any]:
    """Every --prm with its format (`--prm-format` rule: none, once, or once per PRM) and
    its options (`OPTION_HELP`); a general option no PRM's format takes is an error."""
    check_choices([str(p) for p in paths], formats, options)
    parsed = parse_options(options, len(paths))
    plans = []
    for i, path in enumerate(paths):
        resolved = resolve(path, role, forced(formats, i))
        plans.append((path, resolved, options_for(resolved[0], parsed, i)))
    for option in parsed:
        if option.prm is None and not any(option.key in takes(r[0]) for _, r, _ in plans):
            names = ", ".join(sorted({r[0].name for _, r, _ in plans}))
            raise UsageError(f"--prm-option {option.key}: no given PRM's format takes it ({names})")
    return [
        load_resolved(resolved, path, opts, role, dtype, trust_remote_code, allow_pickle)
        for path, resolved, opts in plans
    ]


def format_name(path_or_run: str | Path, role: str = "prm", fmt: str | None = None) -> str:
    """The format a --prm would load as (no weights read)."""
    return resolve(path_or_run, role, None if fmt == AUTO else fmt)[0].name


def require_tdrm(path_or_run: str | Path, fmt: str | None, why: str, role: str = "prm") -> None:
    """A one-line error unless the PRM is tdrm's own (what needs its value head)."""
    name = format_name(path_or_run, role, fmt)
    if name != "tdrm":
        raise UsageError(
            f"{why}; --{role} {path_or_run} is a '{name}' PRM (a PRM from tdrm train-prm is)"
        )
