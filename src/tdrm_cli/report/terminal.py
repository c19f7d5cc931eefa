"""Terminal tables (rich): `tdrm runs` and `tdrm env`."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from rich.table import Table

from tdrm_cli.console import console, fitted
from tdrm_cli.runs import list_runs, versions, writer_alive

KEY_METRICS = ("pass@1", "step_auroc", "accuracy", "pass@n", "train_loss")


def key_metric(metrics: dict) -> str:
    if isinstance(metrics.get("format"), str) and isinstance(metrics.get("solutions"), int):
        skipped = metrics.get("rows_skipped") or 0
        return f"{metrics['format']}: {metrics['solutions']} solutions, {skipped} skipped"
    for key in KEY_METRICS:
        if isinstance(metrics.get(key), int | float):
            return f"{key}={metrics[key]:.3g}"
    for key, value in metrics.items():
        if isinstance(value, int | float):
            return f"{key}={value:.3g}"
    return ""


def runs_table(root: Path) -> None:
    table = Table(title=f"runs in {root}")
    for column in ("name", "stage", "status", "created", "key metric", "parent"):
        table.add_column(column)
    colors = {"complete": "green", "running": "yellow", "failed": "red", "interrupted": "red"}
    for path, manifest in list_runs(root):
        inputs = manifest.get("inputs") or {}
        parent = ", ".join(
            Path(v["path"]).name for v in inputs.values() if isinstance(v, dict) and v.get("path")
        )
        status = manifest.get("status", "?")
        if status == "running" and writer_alive(path) is False:
            status = "interrupted"  # its process died: continue it with --resume
        table.add_row(
            str(path.relative_to(root)),
            str(manifest.get("stage")),
            f"[{colors.get(status, 'white')}]{status}[/]",
            str(manifest.get("created", ""))[:16].replace("T", " "),  # to the minute
            key_metric(manifest.get("metrics") or {}),
            parent,
        )
    console.print(fitted(table))


def env_table() -> None:
    import torch

    table = Table(title="tdrm environment", show_header=False)
    for name, version in versions().items():
        table.add_row(name, str(version))
    table.add_row("python", platform.python_version())
    table.add_row("platform", platform.platform())
    device = (
        f"cuda ({torch.cuda.get_device_name(0)}) x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "cpu"
    )
    table.add_row("device", device)
    table.add_row("torch threads", str(torch.get_num_threads()))
    table.add_row("cpu count", str(os.cpu_count()))
    console.print(fitted(table))
