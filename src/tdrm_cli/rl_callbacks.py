"""Trainer callbacks of `tdrm rl`: the held-out accuracy curve, and the online PRM's
state in every checkpoint (`resume_state` restores both for `--resume`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tdrm_cli.console import log
from tdrm_cli.generation import HFBackend, Sampling
from tdrm_cli.rewards import OnlinePRMUpdate
from tdrm_cli.runs import Run, atomic_write_json, rank, world_size
from tdrm_cli.solutions import split_and_grade
from tdrm_cli.tasks import Problem, Task

CURVE = "eval_curve.json"
ONLINE_PRM_STATE = "online_prm.pt"


@dataclass(eq=False)  # callbacks are compared by identity
class AccuracyCurve(TrainerCallback):
    """Greedy pass@1 on held-out problems at the start, every `every` steps and at the end.

    Each rank evaluates its share of the problems and the counts are gathered. Rank 0
    rewrites `path` after every point, so a killed run keeps its curve for `--resume`.
    """

    task: Task
    tokenizer: Any
    problems: list[Problem]
    prompts: list[str]
    separator: str
    max_new_tokens: int
    every: int
    per_step: float
    path: Path | None
    writer: Any = None
    points: list[dict[str, Any]] = field(default_factory=list)

    def correct(self, model) -> int:
        """Right greedy answers on this rank's share (prompts tokenized as GRPOTrainer does)."""
        share = slice(rank(), None, world_size())
        completions = HFBackend.wrap(model, self.tokenizer).generate(
            self.prompts[share], Sampling(temperature=0.0, max_new_tokens=self.max_new_tokens)
        )
        return sum(
            split_and_grade(self.task, p, c[0].text, self.separator)[2]
            for p, c in zip(self.problems[share], completions, strict=True)
        )

    def point(self, step: int, model) -> None:
        from accelerate.utils import gather_object

        if any(p["step"] == step for p in self.points):
            return
        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        accuracy = sum(gather_object([self.correct(model)])) / len(self.problems)
        model.train(was_training)
        seen = round(step * self.per_step)
        self.points.append({"step": step, "problems_seen": seen, "accuracy": round(accuracy, 4)})
        if self.writer is not None:
            self.writer.add_scalar("eval/pass@1", accuracy, step)
            self.writer.add_scalar("eval/pass@1_by_problems_seen", accuracy, seen)
        if self.path is not None:
            atomic_write_json(
                self.path, {"eval_problems": len(self.problems), "points": self.points}
            )
        log(f"step {step}: held-out greedy pass@1 {accuracy:.3f} after {seen} problems")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.points:  # a resumed run has its early points (global_step is not restored yet)
            self.point(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.point(state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.point(state.global_step, model)


class SaveCritic(TrainerCallback):
    """Puts the online PRM (weights, optimizer, history) into every checkpoint, for --resume."""

    def __init__(self, learner: OnlinePRMUpdate):
        self.learner = learner

    def on_save(self, args, state, control, **kwargs):
        import torch

        if rank() == 0:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            torch.save(self.learner.state(), checkpoint / ONLINE_PRM_STATE)


def resume_state(run: Run, checkpoint: Path | None, learner: OnlinePRMUpdate | None) -> list[dict]:
    """Restore the online PRM from `checkpoint`; the curve's points up to it (later ones are redone)."""
    import torch

    if checkpoint is None:
        return []
    if learner is not None:
        learner.load_state(
            torch.load(
                checkpoint / ONLINE_PRM_STATE, map_location=learner.prm.device, weights_only=True
            )
        )
    if not (run.path / CURVE).is_file():
        return []
    step = int(checkpoint.name.rsplit("-", 1)[1])
    return [
        p
        for p in json.loads((run.path / CURVE).read_text(encoding="utf-8"))["points"]
        if p["step"] <= step
    ]
