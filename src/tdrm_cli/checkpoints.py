"""Trainer checkpoints that survive `kill -9`: find the last finished one, never save a useless last one.

The stages that train (sft, train-prm, rl) keep `checkpoints/checkpoint-N` folders written
by the transformers Trainer until their run is complete, for `--resume`. They also share
the guard against a diverged training: a non-finite loss stops it, and a model whose loss
or weights are not finite fails the run instead of being saved as a result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tdrm_cli.errors import Diverged
from tdrm_cli.runs import rank


def last_checkpoint(folder: str | Path, required: tuple[str, ...] = ()) -> Path | None:
    """The newest *finished* `checkpoint-N` under `folder` (None if there is none).

    A Trainer checkpoint is not written atomically; `trainer_state.json` comes last (then
    the files in `required`, which callbacks add). A process killed mid-save leaves a
    checkpoint without them, or with a truncated state: rank 0 removes it, so `--resume`
    continues from the one before.
    """
    import shutil

    from tdrm_cli.console import log

    found = sorted(
        (p for p in Path(folder).glob("checkpoint-*") if p.name.rsplit("-", 1)[1].isdigit()),
        key=lambda p: int(p.name.rsplit("-", 1)[1]),
    )
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
            if all((checkpoint / name).is_file() for name in required):
                return checkpoint
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        if rank() == 0:
            log(f"{checkpoint}: unfinished checkpoint (killed while saving?); removed")
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


class NoFinalCheckpoint(TrainerCallback):
    """Skip the checkpoint the Trainer saves at its very last step.

    The stage saves the final model itself right after training. A checkpoint at
    `max_steps` is worse than useless: resuming from it, the Trainer runs one step past
    `max_steps` (it checks for the end only after a step), so a run killed between that
    checkpoint and the final save would come back one step longer. Without it, `--resume`
    redoes the last steps from the checkpoint before, exactly as the first run did.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


class StepCounter(TrainerCallback):
    """Counts the optimizer steps this process ran: after `--resume`, only the remaining
    ones (recorded as `steps_run`, so a resume that silently restarted would show)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        return control


def steps_run(trainer: Any) -> int | None:
    """The `StepCounter` count of a Trainer built with one (None without)."""
    counters = [c for c in trainer.callback_handler.callbacks if isinstance(c, StepCounter)]
    return counters[0].steps if counters else None


class StopOnNonFinite(TrainerCallback):
    """Stop training at the first logged non-finite loss (`check_finite` then fails the run)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            control.should_training_stop = True
        return control


def check_finite(model: Any, loss: float | None, stage: str) -> None:
    """A one-line `Diverged` error when the training loss (if given) or any weight is not
    finite."""
    from tdrm_cli.prm import nonfinite_weight

    hint = "(try a lower --learning-rate)"
    if loss is not None and not math.isfinite(loss):
        raise Diverged(f"{stage}: training diverged: the training loss is {loss} {hint}")
    name = nonfinite_weight(model)
    if name is not None:
        raise Diverged(f"{stage}: training diverged: weight '{name}' is not finite {hint}")
