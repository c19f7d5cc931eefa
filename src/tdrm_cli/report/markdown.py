"""Markdown pieces every report section uses: tables, run files, copied plots, readings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def read_json(path: Path, name: str) -> dict:
    return json.loads((Path(path) / name).read_text(encoding="utf-8"))


def copy_plots(run_dir: Path, out: Path, prefix: str, alt: str) -> str:
    """Copy a run's PNGs next to report.md (so it stands alone) and embed each."""
    text = ""
    for png in sorted(Path(run_dir).glob("*.png")):
        target = out / f"{prefix}-{Path(run_dir).name}-{png.name}"
        shutil.copyfile(png, target)
        text += f"\n![{alt}]({target.name})\n"
    return text


def reading(low: float, high: float, better: str, worse: str) -> str:
    """The direction a 95% interval shows: `better` above zero, `worse` below, else noise."""
    return better if low > 0 else worse if high < 0 else "within noise"
