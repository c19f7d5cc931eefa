"""GRPO step time of `tdrm rl --reward prm+rlvr` vs `--reward rlvr`, same settings, one process.

Both sides run the real stage (`rl.run`: trl.GRPOTrainer, generation, rewards, loss,
optimizer step) on the same policy, problem stream, seed and batch shape; the PRM is a
value head on the policy's own backbone (train-prm's default base), so its single-pass
scoring costs what a trained PRM of that size costs. Step time is TRL's `step_time`
(generation + rewards + forward/backward + optimizer).

Pairing: both sides use a tiny learning rate (`--learning-rate`, same for both), so their
policies stay equal and step k generates the same completions on both sides; the work
per step does not depend on the learning rate. The sides alternate `--repeats` times;
each step keeps its fastest repeat (background load on a shared machine only adds time),
the first step is dropped as warm-up, and the ratio is of the summed step times. Also
shown: the time spent inside the PRM reward call. Needs: ratio prm+rlvr / rlvr <= 1.25;
the last lines print it.

    python bench/rl_reward_overhead.py                                 # trains a quick policy first
    python bench/rl_reward_overhead.py --policy runs/sft --prm runs/prm-td
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import report

from tdrm_cli import rewards
from tdrm_cli.configs.train import RLConfig, SFTConfig
from tdrm_cli.stages import rl, sft


def quick_policy(workdir: Path) -> str:
    """The default `tdrm sft` architecture (128 x 4), trained briefly so completions look like arith."""
    cfg = SFTConfig(
        out=str(workdir / "sft"),
        max_steps=100,
        batch_size=32,
        train_problems=3200,
        eval_problems=0,
        save_steps=1000,
    )
    with contextlib.redirect_stdout(sys.stderr):
        return str(sft.run(cfg))


def prm_on_policy(policy: str, path: Path) -> str:
    """A PRM folder: a fresh value head on the policy's backbone."""
    from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
    from tdrm_cli.runs import resolve_model
    from tdrm_cli.steps import read_policy_meta

    base, _ = resolve_model(policy, "policy")
    tokenizer = load_tokenizer(base)
    model = load_value_model(base, tokenizer.pad_token_id)
    PRM(model, tokenizer, prm_meta(tokenizer, read_policy_meta(base), agg="min", loss="td")).save(
        path
    )
    return str(path)


class TimedPRMReward(rewards.PRMReward):
    """PRMReward that adds the seconds spent in each call to `seconds`."""

    seconds: list[float] = []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = super().__call__(*args, **kwargs)
        TimedPRMReward.seconds.append(time.perf_counter() - start)
        return out


def run_steps(cfg: RLConfig) -> tuple[list[float], list[float]]:
    """(TRL step times, mean completion lengths) of every step after the first of one run."""
    with contextlib.redirect_stdout(sys.stderr):
        out = rl.run(cfg)
    history = [
        row for row in json.loads((out / "log_history.json").read_text()) if "step_time" in row
    ]
    return [row["step_time"] for row in history[1:]], [
        row["completions/mean_length"] for row in history[1:]
    ]


def rl_config(policy: str, prm: str | None, out: Path, args, **settings) -> RLConfig:
    """The stage's config for one timed run: same stream, seed and batch shape for every side."""
    return RLConfig(
        policy=policy, prm=prm, task=args.task, problems=args.batch_size * args.steps,
        batch_size=args.batch_size, num_generations=args.num_generations, max_steps=args.steps,
        max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
        eval_problems=0, report_to="none", save_steps=10_000, seed=0, out=str(out), **settings,
    )  # fmt: skip


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--policy", help="Policy run folder or HF model folder (default: train a quick one)."
    )
    parser.add_argument(
        "--prm", help="PRM run/model folder (default: a value head on the policy's backbone)."
    )
    parser.add_argument("--task", default="arith")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=96)
    parser.add_argument("--learning-rate", type=float, default=1e-7)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def alternate(sides: dict, args) -> tuple[dict, dict, str, str]:
    """Run every side (`name -> settings(policy, prm, out) -> RLConfig`) `--repeats` times,
    alternating; each step keeps its fastest repeat. -> (best step times per side, mean
    completion lengths per side, policy, prm)."""
    times: dict[str, list[list[float]]] = {side: [] for side in sides}
    lengths: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tdrm-bench-") as tmp:
        workdir = Path(tmp)
        policy = args.policy or quick_policy(workdir)
        prm = args.prm or prm_on_policy(policy, workdir / "prm")
        for repeat in range(args.repeats):
            for side, config in sides.items():
                cfg = config(policy, prm, workdir / f"{side}-{repeat}")
                steps, lengths[side] = run_steps(cfg)
                times[side].append(steps)
    best = {side: [min(step) for step in zip(*times[side], strict=True)] for side in sides}
    return best, lengths, policy, prm


def print_sides(best: dict, lengths: dict, header: str) -> None:
    n = len(next(iter(best.values())))
    print(f"{header}, {n} timed steps")
    for side, steps in best.items():
        print(
            f"{side:10s} {sum(steps) / n:8.3f} s/step  "
            f"(mean completion {statistics.mean(lengths[side]):.1f} tokens)"
        )


def main() -> int:
    args = arguments(__doc__.splitlines()[0])
    rewards.PRMReward = TimedPRMReward  # rewards.PRM_REWARDS builds the PRM reward by this name
    sides = {
        "rlvr": lambda policy, prm, out: rl_config(policy, None, out, args, reward="rlvr"),
        "prm+rlvr": lambda policy, prm, out: rl_config(policy, prm, out, args, reward="prm+rlvr"),
    }
    best, lengths, policy, prm = alternate(sides, args)
    base, with_prm = sum(best["rlvr"]), sum(best["prm+rlvr"])
    n = len(best["rlvr"])
    print_sides(
        best, lengths,
        f"policy {policy}, prm {prm}: {args.batch_size} problems x {args.num_generations} "
        f"completions per step, max {args.max_completion_length} tokens, best of {args.repeats}",
    )  # fmt: skip
    prm_call = statistics.median(TimedPRMReward.seconds)
    print(f"  PRM reward call {prm_call:.3f} s/step ({prm_call / (base / n):.1%} of an rlvr step)")
    ratio = with_prm / base
    print(f"ratio: {ratio:.3f}")
    return report(
        "`rl_reward_overhead`: GRPO step time, prm+rlvr / rlvr", ratio, "<= 1.25", ratio <= 1.25
    )


if __name__ == "__main__":
    sys.exit(main())
