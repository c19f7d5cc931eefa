"""GRPO step time of `tdrm rl --advantage process` vs `--advantage outcome`, same settings.

Both sides run the real stage (`rl.run`: trl.GRPOTrainer or its process subclass,
generation, rewards, loss, optimizer step) with `--reward prm+rlvr` on the same policy,
PRM, problem stream, seed and batch shape; the PRM is a value head on the policy's own
backbone. What `process` adds: splitting completions into steps, mapping tokens to steps
(incremental decode), the step-level normalisation and a `[B, T]` advantage; its PRM
values come from the pass the PRM reward already makes (cached). Step time is TRL's
`step_time` (generation + rewards + advantages + forward/backward + optimizer).

Pairing as in `rl_reward_overhead.py`: a tiny learning rate keeps both policies equal, so
step k generates the same completions on both sides; the sides alternate `--repeats`
times, each step keeps its fastest repeat, the first step is dropped as warm-up, and the
ratio is of the summed step times. Also shown: the time inside the dense advantage. Needs:
ratio process / outcome <= 1.3; the last lines print it.

    python bench/grpo_advantage.py                                 # trains a quick policy first
    python bench/grpo_advantage.py --policy runs/sft --prm runs/prm-td
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
from rl_reward_overhead import prm_on_policy, quick_policy

from tdrm_cli.configs.train import RLConfig
from tdrm_cli.process_grpo import ProcessGRPOTrainer
from tdrm_cli.stages import rl

GOAL = 1.3
DENSE_SECONDS: list[float] = []


def timed(dense):
    def dense_advantages(self, width):
        start = time.perf_counter()
        out = dense(self, width)
        DENSE_SECONDS.append(time.perf_counter() - start)
        return out

    return dense_advantages


def step_times(advantage: str, policy: str, prm: str, workdir: Path, repeat: int, args):
    """(TRL step times, mean completion lengths) of every step after the first of one short run."""
    cfg = RLConfig(
        policy=policy, prm=prm, reward="prm+rlvr", advantage=advantage, task=args.task,
        problems=args.batch_size * args.steps, batch_size=args.batch_size,
        num_generations=args.num_generations, max_steps=args.steps,
        max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
        eval_problems=0, report_to="none", save_steps=10_000, seed=0,
        out=str(workdir / f"{advantage}-{repeat}"),
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        out = rl.run(cfg)
    history = [
        row for row in json.loads((out / "log_history.json").read_text()) if "step_time" in row
    ]
    return [row["step_time"] for row in history[1:]], [
        row["completions/mean_length"] for row in history[1:]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = parser.parse_args()
    ProcessGRPOTrainer.dense_advantages = timed(ProcessGRPOTrainer.dense_advantages)
    sides = ("outcome", "process")
    times: dict[str, list[list[float]]] = {side: [] for side in sides}
    lengths: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tdrm-bench-") as tmp:
        workdir = Path(tmp)
        policy = args.policy or quick_policy(workdir)
        prm = args.prm or prm_on_policy(policy, workdir / "prm")
        for repeat in range(args.repeats):
            for side in sides:
                steps, lengths[side] = step_times(side, policy, prm, workdir, repeat, args)
                times[side].append(steps)
    best = {side: [min(step) for step in zip(*times[side], strict=True)] for side in sides}
    base, dense = sum(best["outcome"]), sum(best["process"])
    n = len(best["outcome"])
    print(
        f"policy {policy}, prm {prm}: {args.batch_size} problems x {args.num_generations} "
        f"completions per step, --reward prm+rlvr, max {args.max_completion_length} tokens, "
        f"{n} timed steps, best of {args.repeats}"
    )
    for side in sides:
        print(
            f"{side:8s} {sum(best[side]) / n:8.3f} s/step  "
            f"(mean completion {statistics.mean(lengths[side]):.1f} tokens)"
        )
    call = statistics.median(DENSE_SECONDS)
    print(f"  dense advantage {call:.3f} s/step ({call / (base / n):.1%} of an outcome step)")
    ratio = dense / base
    print(f"ratio: {ratio:.3f}  {'PASS' if ratio <= GOAL else 'FAIL'} (<= {GOAL})")
    return report(
        "`grpo_advantage`: GRPO step time, --advantage process / outcome",
        ratio,
        f"<= {GOAL}",
        ratio <= GOAL,
        detail=f"dense advantage {call:.3f} s/step",
    )


if __name__ == "__main__":
    sys.exit(main())
