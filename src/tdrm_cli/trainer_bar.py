"""One rich progress bar for a `transformers.Trainer` (sft, train-prm, rl) on stderr.

It takes the place of the Trainer's tqdm bar (`ProgressCallback`) and of the dicts it
prints at every log (`{'loss': ...}` from `ProgressCallback` / `PrinterCallback`): the bar
counts optimizer steps and shows the latest logged values that matter for the stage.
Every logged value still reaches `log_history.json` and the `--report-to` integrations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from rich.progress import TextColumn
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tdrm_cli.console import progress, quiet_libraries


def shown(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


class TrainerBar(TrainerCallback):
    """Steps done of `max_steps`, elapsed time and `fields` (log key -> label) as last logged.

    Shown by the main process only; `close` ends it (also when training raised)."""

    def __init__(self, description: str, fields: dict[str, str]):
        self.description, self.fields = description, fields
        self.bar = None
        self.task = None
        self.values: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.bar is None:
            self.bar = progress(TextColumn("{task.fields[numbers]}", style="cyan"))
            self.bar.start()
            self.task = self.bar.add_task(
                self.description, total=state.max_steps, completed=state.global_step, numbers=""
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, total=state.max_steps, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None:
            return
        for key, label in self.fields.items():
            if (logs or {}).get(key) is not None:
                self.values[label] = shown(logs[key])
        numbers = "  ".join(f"{label} {value}" for label, value in self.values.items())
        self.bar.update(self.task, numbers=numbers)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextlib.contextmanager
def training_bar(trainer: Any, description: str, fields: dict[str, str]) -> Iterator[None]:
    """Within the block, `trainer` reports through one `TrainerBar` instead of tqdm and
    printed dicts; the bar ends with the block, whether training finished or raised."""
    quiet_libraries()  # datasets / TRL are imported by now
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    bar = TrainerBar(description, fields)
    trainer.add_callback(bar)
    try:
        yield
    finally:
        bar.close()
        trainer.remove_callback(bar)
