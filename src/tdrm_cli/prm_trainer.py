"""The PRM trainer: the loss step, collator and a `transformers.Trainer` subclass.

TRL 1.x ships no PRM trainer, so `PRMTrainer` subclasses `transformers.Trainer` with its
own collator (`StepCollator`) and `compute_loss` (`step_loss`: BCE of step values against
detached targets, docs/design.md#td-targets); accelerate/DeepSpeed, checkpoints,
`resume_from_checkpoint` and `report_to` come from the library. Kept out of the stage
module so the online PRM updates during RL (`rewards.OnlinePRMUpdate`) and the benchmarks
reuse it; the targets are `targets.py`, the math is `td.py`.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

from transformers import Trainer

from tdrm_cli import td
from tdrm_cli.prm import Encoded, pad_batch, step_logits
from tdrm_cli.targets import Targets

# ---------------------------------------------------------------- the loss step


class StepLoss(NamedTuple):
    loss: Any
    """BCE of the step values against the targets, averaged over real steps."""
    values: Any
    """`[batch, steps]` step values (sigmoid of the head logits), with their gradient."""
    targets: Any
    """`[batch, steps]` detached targets."""


def step_loss(
    model, batch: dict[str, Any], head: str, targets: Targets, bootstrap=None
) -> StepLoss:
    """The PRM loss of one `StepCollator` batch, for train-prm and for the online updates in rl.

    Targets bootstrap from `bootstrap` (e.g. a frozen copy's values), by default from the
    detached values themselves."""
    import torch

    logits = step_logits(model, batch, head).float()
    values = torch.sigmoid(logits)
    y = targets(values.detach() if bootstrap is None else bootstrap, batch)
    return StepLoss(td.masked_bce_with_logits(logits, y, batch["step_mask"]), values, y)


def step_features(encoded: Encoded, terminal: float, mc_labels=None, truth_labels=None):
    """One `StepCollator` item: an encoded rollout, its verdict and any step labels."""
    return {
        "input_ids": encoded.ids,
        "step_index": encoded.ends,
        "prompt_len": encoded.prompt_len,
        "sep_tokens": encoded.sep_tokens,
        "terminal": terminal,
        "mc_labels": mc_labels,
        "truth_labels": truth_labels,
    }


@dataclass
class StepCollator:
    """Pads a batch of rollouts: tokens, step indices/mask, verdicts, MC labels, exact step
    truth (`truth_labels`, `has_truth`; a feature may lack it) and step lengths."""

    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [
            Encoded(f["input_ids"], f["step_index"], f["prompt_len"], f.get("sep_tokens", 0))
            for f in features
        ]
        batch = pad_batch(rows, self.pad_id)
        shape = batch["step_mask"].shape
        batch["terminal"] = torch.tensor([f["terminal"] for f in features], dtype=torch.float32)
        batch["mc_labels"] = torch.zeros(shape)
        batch["has_mc"] = torch.zeros(shape[0], dtype=torch.bool)
        batch["truth_labels"] = torch.zeros(shape)
        batch["has_truth"] = torch.zeros(shape[0], dtype=torch.bool)
        batch["step_tokens"] = torch.ones(shape)
        for i, (f, row) in enumerate(zip(features, rows, strict=True)):
            batch["step_tokens"][i, : len(row.ends)] = torch.tensor(
                row.step_tokens, dtype=torch.float32
            )
            if f["mc_labels"] is not None:
                batch["mc_labels"][i, : len(row.ends)] = torch.tensor(
                    f["mc_labels"], dtype=torch.float32
                )
                batch["has_mc"][i] = True
            if f.get("truth_labels") is not None:
                batch["truth_labels"][i, : len(row.ends)] = torch.tensor(
                    f["truth_labels"], dtype=torch.float32
                )
                batch["has_truth"][i] = True
        return batch


# ---------------------------------------------------------------- trainer


class PRMTrainer(Trainer):
    """BCE of step values against detached targets; logs mean |TD error| and smoothness."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        *args: Any,
        targets: Targets,
        target_refresh: int = 0,
        head: str = "linear",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.targets = targets
        self.head = head
        self.target_refresh = target_refresh
        self._target_step: int | None = None
        self._train_metrics: dict[str, list[float]] = defaultdict(list)
        # The frozen copy starts equal to the online model and is refreshed every K steps.
        self.target_model = (
            copy.deepcopy(self.model).eval().requires_grad_(False) if target_refresh > 0 else None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        frozen = self._frozen_values(model, inputs) if self.target_model is not None else None
        loss, values, targets = step_loss(model, inputs, self.head, self.targets, frozen)
        if model.training:
            self._record(values.detach(), targets, inputs)
        return (loss, {"values": values}) if return_outputs else loss

    def _frozen_values(self, model, inputs):
        import torch

        step = self.state.global_step
        if self._target_step is None or step - self._target_step >= self.target_refresh:
            self.target_model.load_state_dict(self.accelerator.unwrap_model(model).state_dict())
            self._target_step = step
        with torch.no_grad():
            logits = step_logits(self.target_model, inputs, self.head)
        return torch.sigmoid(logits.float())

    def _record(self, values, targets, inputs) -> None:
        # td_error is |y - V| against the trained target (the TD error proper under --loss td).
        mask = inputs["step_mask"]
        self._train_metrics["td_error"].append(td.td_error(values, targets, mask).item())
        self._train_metrics["smoothness"].append(td.smoothness(values, mask).item())
        self._train_metrics["smoothness_tokens"].append(
            td.smoothness(values, mask, inputs["step_tokens"]).item()
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Averages over the batches since the last log, this rank's share of the data.
        if "loss" in logs and self._train_metrics:
            logs.update({k: round(sum(v) / len(v), 6) for k, v in self._train_metrics.items()})
            self._train_metrics.clear()
        super().log(logs, start_time)
