"""`tdrm rl --advantage process|td`: `trl.GRPOTrainer` with per-token advantages.

The subclass changes only the advantages; generation (vLLM too), rewards, the loss,
accelerate and checkpoints stay TRL's. Matched against TRL 1.16.0, where

- `_calculate_rewards(inputs, prompts, completions, completion_ids_list)` returns every
  reward function's values gathered over the processes (`[N, functions]`, rank order);
- `_generate_and_score_completions` returns this process's batch with `advantages` of shape
  `[B]`, computed from those rewards;
- `_compute_loss` unsqueezes `advantages` only when it is 1-D, so a `[B, T]` tensor (one
  advantage per completion token) flows through every loss type.

So the trainer keeps what `_calculate_rewards` saw (texts, token ids, the gathered verifier
verdicts) and, after TRL's `_generate_and_score_completions`, replaces `advantages` by the
`[B, T]` tensor of `process_advantage`. The PRM's step values come from the same cached
pass the PRM reward uses (`StepValueCache`), gathered over processes (groups may span
them), normalised globally, and each process keeps its own rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from trl import GRPOTrainer

from tdrm_cli import process_advantage as pa
from tdrm_cli.errors import UsageError
from tdrm_cli.rewards import completion_text

TRL_MATCHED = "1.16.0"


class StepValueCache:
    """A PRM whose `score` remembers every (question, steps) it scored until `clear()`:
    the PRM reward and the dense advantage of one batch share one PRM pass."""

    def __init__(self, prm: Any):
        self.prm = prm
        self.cache: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def __getattr__(self, name: str) -> Any:  # separator, agg, tokenizer... of the PRM
        if name == "prm":
            raise AttributeError(name)
        return getattr(self.prm, name)

    def clear(self) -> None:
        self.cache.clear()

    def score(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        keys = [(q, tuple(steps)) for q, steps in zip(problems, solutions, strict=True)]
        todo = [key for key in dict.fromkeys(keys) if key not in self.cache]
        if todo:
            values = self.prm.score([q for q, _ in todo], [list(s) for _, s in todo])
            self.cache.update(zip(todo, values, strict=True))
        return [list(self.cache[key]) for key in keys]


class ProcessGRPOTrainer(GRPOTrainer):
    """GRPO with `--advantage process`: group-normalised PRM step rewards on each step's tokens."""

    advantage = "process"

    def __init__(
        self, *args: Any, step_values: StepValueCache, gamma: float = 1.0,
        step_rewards: Any = None, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        if "verifier" not in self.reward_func_names:
            raise ValueError(f"--advantage {self.advantage} needs the verifier among the rewards")
        self.step_values, self.gamma, self.step_rewards = step_values, gamma, step_rewards
        self._scored: tuple | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._scored = (inputs, completions, completion_ids_list, rewards)
        return rewards

    def _generate_and_score_completions(self, inputs):
        self.step_values.clear()  # the PRM may have changed since (--prm-update online)
        output = super()._generate_and_score_completions(inputs)
        output["advantages"] = self.dense_advantages(output["completion_ids"].shape[1])
        return output

    def dense_advantages(self, width: int):
        """[B, width] advantages of this process's completions."""
        import torch
        from accelerate.utils import gather_object

        inputs, completions, completion_ids, rewards = self._scored
        texts = [completion_text(c) for c in completions]
        spans = [pa.step_spans(text, self.step_values.separator) for text in texts]
        steps = [[text[a:b] for a, b in s] for text, s in zip(texts, spans, strict=True)]
        scored = [i for i, s in enumerate(steps) if s]
        values: list[list[float]] = [[] for _ in texts]
        found = self.step_values.score(
            [inputs[i]["question"] for i in scored], [steps[i] for i in scored]
        )
        for i, v in zip(scored, found, strict=True):
            values[i] = v
        all_values = gather_object(values) if self.accelerator.num_processes > 1 else values
        verdicts = torch.nan_to_num(rewards[:, self.reward_func_names.index("verifier")], nan=0.0)
        per_step = self.step_advantages(all_values, verdicts)
        start = self.accelerator.process_index * len(texts)
        local = per_step[start : start + len(texts)]
        token_steps = [
            pa.token_steps(pa.token_char_ends(self.processing_class, list(ids), text), s)
            for ids, text, s in zip(completion_ids, texts, spans, strict=True)
        ]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["steps_per_completion"].append(
            sum(map(len, all_values)) / len(all_values)
        )
        return pa.token_advantages(local, token_steps, width)

    def step_advantages(self, values: list[list[float]], verdicts):
        rewards, mask = pa.pad_steps(pa.process_rewards(values, verdicts.tolist()), verdicts.device)
        return pa.process_advantages(rewards, mask, self.num_generations, self.scale_rewards)


class CriticGRPOTrainer(ProcessGRPOTrainer):
    """GRPO with `--advantage td`: each step's tokens get its TD error under the PRM as critic."""

    advantage = "td"

    def step_advantages(self, values: list[list[float]], verdicts):
        padded, mask = pa.pad_steps([v or [0.0] for v in values], verdicts.device)
        rewards, terminal = pa.critic_rewards(self.step_rewards, verdicts, mask)
        returns = terminal if rewards is None else terminal + rewards.sum(1)
        baseline = pa.group_mean(returns, self.num_generations)
        return pa.critic_advantages(padded, mask, terminal, baseline, self.gamma, rewards)


TRAINERS = {"process": ProcessGRPOTrainer, "td": CriticGRPOTrainer}
"""`--advantage` -> trainer class; `outcome` is TRL's GRPOTrainer itself."""


def trainer_factory(
    advantage: str, prm: Any, gamma: float = 1.0, step_rewards: Any = None
) -> tuple[Any, Any]:
    """(what builds the trainer, the PRM the PRM reward should score with) for `--advantage`;
    `step_rewards` (`step_rewards.StepRewards` or None) gives `td` its rewards r_t."""
    if advantage == "outcome":
        return GRPOTrainer, prm
    for method in ("_calculate_rewards", "_generate_and_score_completions"):
        if not hasattr(GRPOTrainer, method):
            import trl

            raise UsageError(
                f"--advantage {advantage}: trl {trl.__version__} has no GRPOTrainer.{method} "
                f"(matched against trl {TRL_MATCHED})"
            )
    cache = StepValueCache(prm)
    kwargs = {"step_rewards": step_rewards} if advantage == "td" else {}
    return functools.partial(TRAINERS[advantage], step_values=cache, gamma=gamma, **kwargs), cache
