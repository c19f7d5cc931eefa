"""The rewards r_t of the transitions inside a solution, for the TD targets (`--step-reward`).

`td.py`'s targets take `rewards[b, t]`, the reward of the transition from step t to step
t+1, and the terminal reward R of the last transition; until `--step-reward` every caller
passed zeros and the verdict. `STEP_REWARDS` is the registry of sources, one function each
`(options, terminal, mask, batch) -> (rewards or None, terminal)`:

* `none` (default): no rewards, R = verdict: the targets of before, computed by the same call.
* `shaping`: the length-shaped outcome: R becomes a cosine of the solution's step count,
  between a start and an end value chosen by the verdict; the other rewards stay 0.
* `labels`: r_t = --label-reward-scale x the step label of step t+1 (`step_labels`: the
  Monte-Carlo labels of collect, or imported ones); every row must have them.
* `length`: r_t = -(--step-cost) for every transition inside the solution.

`StepRewardOptions` holds their settings, shared by train-prm and rl's online updates (a
base of `configs.train.TargetOptions`). Light to import: torch only inside the sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from tdrm_cli.config import _check, listed, opt
from tdrm_cli.targets import MC_LABELS, Needs


def cosine_shaped(steps: int, correct: bool, options: Any) -> float:
    """The shaped outcome of a solution of `steps` steps, cosine-interpolated over its length
    (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning", arXiv:2502.03373):

        CosFn(t, T, eta_start, eta_end) = eta_end + 1/2 (eta_start - eta_end)(1 + cos(t pi / T))

        R = CosFn(L, L_max, r0_correct, rL_correct)   if the verdict is correct
            CosFn(L, L_max, r0_wrong,   rL_wrong)     if it is wrong
            r_exceed                                  if L >= L_max

    with L the solution's step count and L_max = --shaping-max-steps (Yeo et al. count
    tokens; a PRM here sees steps). CosFn(0) = eta_start, CosFn(T) = eta_end."""
    if steps >= options.shaping_max_steps:
        return options.shaping_exceed
    start, end = (
        (options.shaping_correct_start, options.shaping_correct_end)
        if correct
        else (options.shaping_wrong_start, options.shaping_wrong_end)
    )
    return end + 0.5 * (start - end) * (1.0 + math.cos(steps * math.pi / options.shaping_max_steps))


def _none(options, terminal, mask, batch):
    return None, terminal


def _shaping(options, terminal, mask, batch):
    import torch

    from tdrm_cli.td import _bool

    lengths = _bool(mask).long().sum(dim=1).tolist()
    verdicts = torch.as_tensor(terminal).reshape(-1).tolist()
    shaped = [cosine_shaped(n, v > 0.5, options) for n, v in zip(lengths, verdicts, strict=True)]
    return None, torch.tensor(shaped, dtype=torch.float32, device=mask.device)


def _labels(options, terminal, mask, batch):
    import torch

    if batch is None or not bool(batch["has_mc"].all()):
        raise ValueError("--step-reward labels: a rollout without step_labels reached the targets")
    labels = batch["mc_labels"].float()
    # r_t is the reward of the transition into step t+1: the label of the step it reaches.
    entered = torch.cat([labels[:, 1:], torch.zeros_like(labels[:, :1])], dim=1)
    return options.label_reward_scale * entered, terminal


def _length(options, terminal, mask, batch):
    import torch

    return torch.full(
        mask.shape, -options.step_cost, dtype=torch.float32, device=mask.device
    ), terminal


class StepReward(NamedTuple):
    """One `--step-reward`: its rewards and how it is shown."""

    rewards: Callable[[Any, Any, Any, dict[str, Any] | None], tuple[Any, Any]]
    """`(options, terminal, mask, batch) -> (rewards [batch, steps] or None, terminal [batch])`."""
    help: str
    needs: Needs | None = None
    """A rollout column it reads (every row must have it; online rollouts have none)."""


STEP_REWARDS: dict[str, StepReward] = {
    "none": StepReward(_none, "no rewards inside a solution, R = verdict"),
    "shaping": StepReward(
        _shaping, "R = cosine of the step count between --shaping-* values, by verdict"
    ),
    "labels": StepReward(_labels, "r_t = --label-reward-scale x step label of step t+1", MC_LABELS),
    "length": StepReward(_length, "r_t = -(--step-cost) per step"),
}

ONLINE_STEP_REWARDS = tuple(name for name, source in STEP_REWARDS.items() if source.needs is None)
"""The sources fresh rollouts allow: they carry only the verifier's verdict."""


@dataclass
class StepRewardOptions:
    """The `--step-reward` source and its settings (train-prm, rl --prm-update online)."""

    step_reward: str = opt(
        "none",
        "Rewards r_t of the transitions in the TD targets: "
        + listed(f"{name} ({source.help})" for name, source in STEP_REWARDS.items())
        + ".",
    )
    step_cost: float = opt(0.01, "With --step-reward length: the cost of each step.")
    label_reward_scale: float = opt(
        0.1, "With --step-reward labels: r_t = this x the label of the step reached."
    )
    shaping_max_steps: int = opt(
        16, "With --step-reward shaping: L_max, the step count where the cosine ends."
    )
    shaping_correct_start: float = opt(1.0, "Shaping: R of a correct solution of 0 steps.")
    shaping_correct_end: float = opt(0.5, "Shaping: R of a correct solution of L_max steps.")
    shaping_wrong_start: float = opt(0.0, "Shaping: R of a wrong solution of 0 steps.")
    shaping_wrong_end: float = opt(0.0, "Shaping: R of a wrong solution of L_max steps.")
    shaping_exceed: float = opt(0.0, "Shaping: R of a solution of L_max steps or more.")

    def check_step_reward(self, allowed: tuple[str, ...], loss: str) -> None:
        """The source one of `allowed` (a refused one that reads labels says so), only with
        --loss td, and its settings in range."""
        source = STEP_REWARDS.get(self.step_reward)
        if self.step_reward not in allowed:
            why = (
                f"reads {source.needs.what}, which online rollouts lack; "
                if source and source.needs
                else ""
            )
            _check(False, f"--step-reward {self.step_reward}: {why}expected {listed(allowed)}")
        _check(
            self.step_reward == "none" or loss == "td",
            f"--step-reward {self.step_reward} needs --loss td (got --loss {loss})",
        )
        _check(self.step_cost >= 0, f"--step-cost {self.step_cost}: must be >= 0")
        _check(self.shaping_max_steps >= 1, "--shaping-max-steps must be >= 1")
        for name in STEP_REWARD_FIELDS[1:]:
            value = getattr(self, name)
            _check(math.isfinite(value), f"--{name.replace('_', '-')} {value}: must be finite")


STEP_REWARD_FIELDS = tuple(StepRewardOptions.__dataclass_fields__)
"""The option names, in order; `step_reward` first."""


@dataclass(frozen=True)
class StepRewards:
    """A resolved source with its settings, as `targets.Targets` uses it."""

    options: Any

    @classmethod
    def from_config(cls, cfg: Any) -> StepRewards | None:
        """None for `none` (or a config without the option): the targets of before, unchanged."""
        if getattr(cfg, "step_reward", "none") == "none":
            return None
        return cls(StepRewardOptions(**{f: getattr(cfg, f) for f in STEP_REWARD_FIELDS}))

    @property
    def name(self) -> str:
        return self.options.step_reward

    def __call__(self, terminal, mask, batch: dict[str, Any] | None = None):
        """(rewards [batch, steps] or None, terminal [batch]) for `td.py`'s target functions."""
        return STEP_REWARDS[self.name].rewards(self.options, terminal, mask, batch)

    def label(self) -> str:
        return f"step reward {self.name}"


PRM_REWARD_HELP: dict[str, str] = {
    "agg": "every step scored, aggregated by --agg",
    "tdrm-reference": (
        "TDRM's reference RL code: the steps before the answer step, the raw logit of the "
        "last one's value"
    ),
}
"""`rl --prm-reward` choices (the callables: `rewards.PRM_REWARDS`; kept here, light to import)."""
