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

import statistics
import sys
import time

from common import report
from rl_reward_overhead import alternate, arguments, print_sides, rl_config

from tdrm_cli.process_grpo import ProcessGRPOTrainer

GOAL = 1.3
DENSE_SECONDS: list[float] = []


def timed(dense):
    def dense_advantages(self, width):
        start = time.perf_counter()
        out = dense(self, width)
        DENSE_SECONDS.append(time.perf_counter() - start)
        return out

    return dense_advantages


def main() -> int:
    args = arguments(__doc__.splitlines()[0])
    ProcessGRPOTrainer.dense_advantages = timed(ProcessGRPOTrainer.dense_advantages)

    def side(advantage: str):
        return lambda policy, prm, out: rl_config(
            policy, prm, out, args, reward="prm+rlvr", advantage=advantage
        )

    sides = {advantage: side(advantage) for advantage in ("outcome", "process")}
    best, lengths, policy, prm = alternate(sides, args)
    base, dense = sum(best["outcome"]), sum(best["process"])
    n = len(best["outcome"])
    print_sides(
        best, lengths,
        f"policy {policy}, prm {prm}: {args.batch_size} problems x {args.num_generations} "
        f"completions per step, --reward prm+rlvr, max {args.max_completion_length} tokens, "
        f"best of {args.repeats}",
    )  # fmt: skip
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
