"""Generated tokens/s of the demo's policy setting against the one it replaced, side by side.

Before: the default `tdrm sft` policy (4x128) sampled in batches of 64 (collect's default).
Now: the demo's policy (2x64) sampled in batches of 1024 (the demo's collect and bon). Both
sample the same arith questions at T=1 with `HFBackend.generate` in one process, with random
weights (speed does not depend on training), interleaved over `--repeats` rounds, best kept.
The 2x64 policy at batch 64 is printed too, so the share of the batch size shows. Needs:
ratio now/before >= 3.

    python bench/demo_generation.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import policy_folder, report

from tdrm_cli.generation import HFBackend, Sampling
from tdrm_cli.stages.sft import PROMPT_TEMPLATE
from tdrm_cli.tasks import load_task

TASK = "arith:ops=6,max_operand=6,mul=true,mod=7"


def tokens_per_s(backend: HFBackend, prompts: list[str], n: int) -> float:
    start = time.perf_counter()
    out = backend.generate(prompts, Sampling(n=n, temperature=1.0, max_new_tokens=80, seed=1))
    tokens = sum(c.num_tokens for row in out for c in row)
    return tokens / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    problems = load_task(TASK).problems("test", args.problems)
    prompts = [PROMPT_TEMPLATE.format(question=p.question) for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        old = policy_folder(Path(tmp) / "old", hidden=128, layers=4, heads=4)
        new = policy_folder(Path(tmp) / "new", hidden=64, layers=2, heads=2)
        sides = {
            "before (4x128, batch 64)": HFBackend(str(old), batch_size=64),
            "now (2x64, batch 1024)": HFBackend(str(new), batch_size=1024),
            "2x64, batch 64": HFBackend(str(new), batch_size=64),
        }
        best = {name: 0.0 for name in sides}
        for _ in range(args.repeats):
            for name, backend in sides.items():
                best[name] = max(best[name], tokens_per_s(backend, prompts, args.n))
    for name, value in best.items():
        print(f"{name}: {value:,.0f} tokens/s", file=sys.stderr)
    ratio = best["now (2x64, batch 1024)"] / best["before (4x128, batch 64)"]
    detail = ", ".join(f"{name} {value:.0f} tok/s" for name, value in best.items())
    metric = "`demo_generation`: demo policy now / before, tokens/s"
    return report(metric, ratio, ">= 3", ratio >= 3, detail)


if __name__ == "__main__":
    sys.exit(main())
