"""Markdown pieces every report section uses: tables, run files, copied plots, readings."""

from __future__ import annotations

import json
import shutil
from collections import Counter
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


def plot_names(run_dirs: list[Path], taken: set[str]) -> dict[Path, str]:
    """The name next to report.md of every PNG in `run_dirs`: its own where no other plot
    (nor a name in `taken`) has it, else `<run folder>-<name>` (numbered if still taken)."""
    pngs = list(dict.fromkeys(png for d in run_dirs for png in sorted(Path(d).glob("*.png"))))
    counts = Counter(png.name for png in pngs)
    names, used = {}, set(taken)
    for png in pngs:
        name = png.name
        if counts[name] > 1 or name in taken:
            name = f"{png.parent.name}-{png.name}"
        stem, i = Path(name).stem, 2
        while name in used:
            name, i = f"{stem}-{i}.png", i + 1
        used.add(name)
        names[png] = name
    return names


def copy_plots(run_dir: Path, out: Path, alt: str, names: dict[Path, str]) -> str:
    """Copy a run's PNGs next to report.md under their `plot_names` (so the report stands
    alone) and embed each."""
    text = ""
    for png in sorted(Path(run_dir).glob("*.png")):
        shutil.copyfile(png, out / names[png])
        text += f"\n![{alt}]({names[png]})\n"
    return text


def reading(low: float, high: float, better: str, worse: str) -> str:
    """The direction a 95% interval shows: `better` above zero, `worse` below, else noise."""
    return better if low > 0 else worse if high < 0 else "within noise"
