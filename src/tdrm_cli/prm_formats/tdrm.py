"""tdrm's own PRM: a folder written by `tdrm train-prm` (`tdrm_prm.json` beside a one-label
token classifier), loaded by `prm.load_prm` exactly as before public formats existed."""

from __future__ import annotations

from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats.base import Folder, Format

PRM_META = "tdrm_prm.json"  # prm.PRM_META (prm imports the model stack; this module may not)


def detect(folder: Folder) -> bool:
    return PRM_META in folder.files


def load(folder: Folder, options: dict[str, str], dtype: Any, device: str, trust_remote_code: bool):
    if options:
        raise UsageError(
            f"--prm-option {next(iter(options))}: format 'tdrm' takes no options "
            f"(its {PRM_META} says how it scores)"
        )
    from tdrm_cli.prm import load_prm

    prm = load_prm(folder.path, "prm", dtype, trust_remote_code)
    prm.model.to(device)
    return prm


FORMAT = Format(
    "tdrm",
    f"a PRM trained by tdrm train-prm ({PRM_META} beside a one-label token classifier)",
    detect,
    load,
)
