"""Reward callables for `trl.GRPOTrainer` (docs/design.md#rl-rewards).

GRPOTrainer calls every reward function as

    reward(prompts=..., completions=..., completion_ids=..., **columns) -> list[float]

with one entry per completion, where `columns` are the dataset's other columns
(`problem_id`, `question`, `gold`, repeated per completion) plus a few trainer extras
(`trainer_state`, `log_metric`, ...). Both rewards here are plain callables with a
`__name__`, so TRL logs them separately as `rewards/verifier/mean` and
`rewards/prm/mean`; `--reward prm+rlvr` weights them with GRPO's `reward_weights`.

`OnlinePRMUpdate` keeps the PRM reward learning while the policy trains
(`--prm-update online`): train-prm's loss step (`prm_trainer.step_loss`) on fresh
rollouts, the verifier's verdict as the terminal reward.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback

from tdrm_cli import td
from tdrm_cli.prm_trainer import StepCollator, step_features, step_loss
from tdrm_cli.solutions import split_and_grade
from tdrm_cli.steps import DEFAULT_SEPARATOR, split_steps
from tdrm_cli.targets import Targets
from tdrm_cli.tasks import Problem, Task
from tdrm_cli.voting import aggregate

Observer = Callable[[list[str], list[str], list[float]], None]
"""`observer(questions, completion_texts, verdicts)`: sees every verified batch (online PRM updates)."""


def completion_text(completion: Any) -> str:
    """The generated text: a plain string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


class VerifierReward:
    """1.0 when the completion's final answer passes the task's check, else 0.0 (RLVR)."""

    def __init__(
        self, task: Task, separator: str = DEFAULT_SEPARATOR, observer: Observer | None = None
    ):
        self.__name__ = "verifier"
        self.task = task
        self.separator = separator
        self.observer = observer

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        question: Sequence[str],
        gold: Sequence[str],
        problem_id: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        ids = problem_id or [""] * len(texts)
        verdicts = []
        for pid, q, g, text in zip(ids, question, gold, texts, strict=True):
            _, _, correct = split_and_grade(self.task, Problem(pid, q, g), text, self.separator)
            verdicts.append(float(correct))
        if self.observer is not None:
            self.observer(list(question), texts, verdicts)
        return verdicts


class PRMReward:
    """The PRM's aggregated step score of each completion, all steps scored in one pass.

    `prm` is anything with `score(questions, step_lists) -> list[list[float]]` and a
    `separator` (a `tdrm_cli.prm.PRM`, or a fake in tests). A completion without steps
    scores 0.0. Identical (question, steps) pairs are scored once: a GRPO group of a
    confident policy repeats itself a lot, and the PRM forward is most of this reward's cost.
    """

    def __init__(self, prm: Any, agg: str | None = None):
        self.__name__ = "prm"
        self.prm = prm
        self.agg = agg or getattr(prm, "agg", "min")
        aggregate([], self.agg)  # an unknown aggregation fails here, not mid-training

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], question: Sequence[str], **_: Any
    ) -> list[float]:
        keys = [
            (q, tuple(self.scored_steps(split_steps(completion_text(c), self.prm.separator))))
            for q, c in zip(question, completions, strict=True)
        ]
        unique = [key for key in dict.fromkeys(keys) if key[1]]
        values = (
            self.prm.score([q for q, _ in unique], [list(steps) for _, steps in unique])
            if unique
            else []
        )
        score = {key: self.reward(v) for key, v in zip(unique, values, strict=True)}
        return [score.get(key, 0.0) for key in keys]

    def scored_steps(self, steps: list[str]) -> list[str]:
        """The steps the PRM scores: all of them."""
        return steps

    def reward(self, values: list[float]) -> float:
        """One completion's reward from its step values: their aggregation."""
        return aggregate(values, self.agg)


class ReferencePRMReward(PRMReward):
    """The PRM reward of TDRM's reference RL code (`GRPOProcessTrainer`, THUDM/TDRM commit
    d411244, trl/trl/trainer/grpo_process_trainer.py, `remove_boxed(text, 0)`): the steps
    before the first one that states an answer (the answer step and all after it dropped;
    at least one step kept; all of them when none states an answer), scored once, and the
    reward is the raw logit of the last kept step's value (a sequence classifier's logit,
    no sigmoid). `--agg` does not apply."""

    def __init__(self, prm: Any, task: Task):
        super().__init__(prm, "last")
        self.task = task

    def scored_steps(self, steps: list[str]) -> list[str]:
        for i, step in enumerate(steps):
            if self.task.extract_answer([step]) is not None:
                return steps[: max(i, 1)]
        return steps

    def reward(self, values: list[float]) -> float:
        return value_logit(values[-1])


LOGIT_CLIP = 1e-7
"""Step values are clipped to [c, 1-c] before the logit (|logit| <= 16.1): a float32 sigmoid
rounds logits above ~17 to 1.0."""


def value_logit(value: float) -> float:
    """log(p / (1 - p)) of a step value p, the logit the PRM's head gave it."""
    p = min(max(float(value), LOGIT_CLIP), 1.0 - LOGIT_CLIP)
    return math.log(p) - math.log1p(-p)


PRM_REWARDS: dict[str, Callable[[Any, str | None, Task], PRMReward]] = {
    "agg": lambda prm, agg, task: PRMReward(prm, agg),
    "tdrm-reference": lambda prm, agg, task: ReferencePRMReward(prm, task),
}
"""`rl --prm-reward` -> the PRM reward callable (choices and help: `step_rewards.PRM_REWARD_HELP`)."""


# ---------------------------------------------------------------- the critic, trained online


class OnlinePRMUpdate(TrainerCallback):
    """PRM updates on the policy's fresh rollouts toward `targets`, verdict = terminal reward.

    The actor-critic loop: `observe` is the verifier's observer and buffers every verified
    completion. Every `every` GRPO steps the buffers of all ranks are gathered (so every
    rank's PRM copy takes the same steps) and the PRM takes one pass of minibatch steps over
    them: train-prm's `step_loss` on batches without MC labels or step truth (rollouts
    carry only their verdict). It scores in eval mode in between. `state`/`load_state`
    carry it through checkpoints.
    """

    def __init__(
        self,
        prm: Any,
        every: int,
        learning_rate: float,
        batch_size: int,
        targets: Targets,
        seed: int = 0,
        writer: Any = None,
    ):
        import torch

        self.prm, self.every, self.batch_size = prm, every, batch_size
        self.targets, self.seed, self.writer = targets, seed, writer
        self.collate = StepCollator(prm.tokenizer.pad_token_id)
        self.optimizer = torch.optim.AdamW(
            prm.model.parameters(), lr=learning_rate, weight_decay=0.0
        )
        self.buffer: list[tuple[str, list[str], float]] = []
        self.history: list[dict[str, Any]] = []

    def observe(self, questions: list[str], texts: list[str], verdicts: list[float]) -> None:
        for question, text, verdict in zip(questions, texts, verdicts, strict=True):
            self.buffer.append((question, split_steps(text, self.prm.separator), verdict))

    def on_step_end(self, args, state, control, **kwargs):
        from accelerate.utils import gather_object

        if state.global_step % self.every:
            return
        rollouts = [r for r in gather_object(self.buffer) if r[1]]  # rank order, same on every rank
        self.buffer = []
        if rollouts:
            stats = self.update(rollouts, seed=self.seed + state.global_step)
            # Every rank took the same steps on the same rollouts: its copy must be the same.
            prints = gather_object([self.fingerprint()])
            stats["rank_spread"] = max(prints) - min(prints)
            self.history.append({"step": state.global_step, **stats})
            for key in ("loss", "td_error", "mean_value") if self.writer else ():
                self.writer.add_scalar(f"prm_online/{key}", stats[key], state.global_step)

    def fingerprint(self) -> float:
        """A cheap digest of the PRM's weights (their sum, in float64), compared across ranks."""
        return sum(float(p.detach().double().sum()) for p in self.prm.model.parameters())

    def update(self, rollouts: list[tuple[str, list[str], float]], seed: int) -> dict[str, Any]:
        """One shuffled pass of minibatch steps over `(question, steps, verdict)` rollouts."""
        order = list(range(len(rollouts)))
        random.Random(seed).shuffle(order)
        losses, errors, means = [], [], []
        self.prm.model.train()
        for start in range(0, len(order), self.batch_size):
            chunk = [rollouts[i] for i in order[start : start + self.batch_size]]
            features = [
                step_features(self.prm.encode(question, steps), verdict)
                for question, steps, verdict in chunk
            ]
            batch = {k: v.to(self.prm.device) for k, v in self.collate(features).items()}
            mask = batch["step_mask"]
            loss, values, targets = step_loss(self.prm.model, batch, self.prm.head, self.targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            errors.append(td.td_error(values.detach(), targets, mask).item())
            means.append(values.detach()[mask].mean().item())
        self.prm.model.eval()
        return {
            "rollouts": len(rollouts),
            "gradient_steps": len(losses),
            "loss": round(statistics.mean(losses), 6),
            "td_error": round(statistics.mean(errors), 6),
            "mean_value": round(statistics.mean(means), 6),
        }

    def state(self) -> dict[str, Any]:
        return {
            "model": self.prm.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.prm.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
