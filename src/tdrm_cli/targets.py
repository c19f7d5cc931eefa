"""What each PRM step value is fit to: the `--loss` registry and the `Targets` spec.

`TARGETS` is the one table of losses. `train-prm --loss` and `rl --prm-update online
--loss` take their choices, `--help` text and validation from it, and the trainers compute
their targets through it, so a new loss is one target function plus one entry here.

Light to import: torch comes in with `td.py` inside the target functions, which keeps
the stage configs, and so `tdrm --help`, free of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tdrm_cli.config import listed


@dataclass
class Targets:
    """Which target each step is fit to; `__call__` picks the function from `TARGETS`."""

    loss: str = "td"
    gamma: float = 1.0
    td_lambda: float = 0.8
    n_step: int | None = None
    td_mix: float | None = None
    hard: bool = False
    step_rewards: Any = None
    """`step_rewards.StepRewards` (`--step-reward`), or None: no rewards inside a solution."""

    @classmethod
    def from_config(cls, cfg: Any) -> Targets:
        """From a config with the target options (`configs.train.TargetOptions`); `hard` only
        matters for MC labels, so a stage without them (rl) has no such option."""
        from tdrm_cli.step_rewards import StepRewards

        hard = getattr(cfg, "hard", False)
        steps = StepRewards.from_config(cfg)
        return cls(cfg.loss, cfg.gamma, cfg.td_lambda, cfg.n_step, cfg.td_mix, hard, steps)

    def td(self, values, terminal, mask, batch: dict[str, Any] | None = None):
        """TD(lambda), or n-step when `n_step` is set; the rewards inside a solution and R
        come from `step_rewards` (`batch` holds the labels it may read), else 0 and the verdict."""
        from tdrm_cli import td

        rewards = None
        if self.step_rewards is not None:
            rewards, terminal = self.step_rewards(terminal, mask, batch)
        if self.n_step is not None:
            return td.nstep_targets(
                values, rewards, terminal, mask, n=self.n_step, gamma=self.gamma
            )
        return td.td_lambda_targets(
            values, rewards, terminal, mask, gamma=self.gamma, lam=self.td_lambda
        )

    def label(self) -> str:
        """The target in words, for the logs."""
        words = TARGETS[self.loss].label(self)
        return words if self.step_rewards is None else f"{words}, {self.step_rewards.label()}"

    def __call__(self, values, batch: dict[str, Any]):
        """`[batch, steps]` targets from the bootstrap `values` and a `StepCollator` batch."""
        return TARGETS[self.loss].target(self, values, batch)


def _td_target(spec: Targets, values, batch):
    from tdrm_cli import td

    y = spec.td(values, batch["terminal"], batch["step_mask"], batch)
    if spec.td_mix is None:
        return y
    mc = td.mc_targets(batch["mc_labels"], batch["step_mask"], hard=spec.hard)
    return td.mix_targets(y, mc, spec.td_mix, batch["step_mask"], mc_mask=batch["has_mc"])


def _mc_target(spec: Targets, values, batch):
    from tdrm_cli import td

    return td.mc_targets(batch["mc_labels"], batch["step_mask"], hard=spec.hard)


def _truth_target(spec: Targets, values, batch):
    from tdrm_cli import td

    return td.truth_targets(batch["truth_labels"], batch["step_mask"])


def _outcome_target(spec: Targets, values, batch):
    from tdrm_cli import td

    return td.outcome_targets(batch["terminal"], batch["step_mask"])


def _td_label(spec: Targets) -> str:
    return f"n-step n={spec.n_step}" if spec.n_step else f"TD(lambda={spec.td_lambda})"


class Needs(NamedTuple):
    """A rollout column a loss fits beyond the verdict (online rollouts have none)."""

    column: str
    """The `rollouts.parquet` column (`solutions.py`), checked per row when the loss is used."""
    what: str
    """The labels in words."""
    source: str
    """Where rollouts get them, for the error when a run has none."""
    pronoun: str = "them"


MC_LABELS = Needs("step_labels", "Monte-Carlo step labels", "collect with --mc-rollouts > 0")
STEP_TRUTH = Needs(
    "step_truth", "exact step truth", "the task cannot check single steps", pronoun="it"
)


class Loss(NamedTuple):
    """One `--loss`: its target function and how it is shown."""

    target: Callable[[Targets, Any, dict[str, Any]], Any]
    """`(spec, bootstrap values, batch) -> [batch, steps]` targets."""
    help: str
    """What the target is, in `--loss` help."""
    label: Callable[[Targets], str]
    """The target with its settings, in the train-prm log line."""
    needs: Needs | None = None


TARGETS: dict[str, Loss] = {
    "td": Loss(_td_target, "TD(lambda), or n-step with --n-step", _td_label),
    "mc": Loss(_mc_target, "Monte-Carlo step labels", lambda _: "MC labels", MC_LABELS),
    "truth": Loss(
        _truth_target,
        "exact step_truth, prefix-correct: the ceiling for this backbone and data",
        lambda _: "exact step truth (prefix-correct)",
        STEP_TRUTH,
    ),
    "outcome": Loss(_outcome_target, "verdict at every step", lambda _: "outcome"),
}

ONLINE_LOSSES = tuple(name for name, loss in TARGETS.items() if loss.needs is None)
"""The losses a PRM can take on fresh rollouts, which carry only the verifier's verdict."""


def loss_help(names: Iterable[str]) -> str:
    """The `--loss` choices among `names`, each with what it fits."""
    return listed(f"{name} ({TARGETS[name].help})" for name in names)


def loss_refused(loss: str, losses: Sequence[str]) -> str:
    """The error line for a `--loss` outside `losses`; a loss left out for its labels says so."""
    needs = TARGETS[loss].needs if loss in TARGETS else None
    why = f"fits {needs.what}, which online rollouts lack; " if needs else ""
    return f"--loss {loss}: {why}expected {listed(losses)}"
