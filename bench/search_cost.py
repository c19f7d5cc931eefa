"""Cost of step-level beam search vs depth: it must grow linearly (prefixes are never regenerated).

What runs: `tdrm search`'s own beam search (`METHODS["beam"]`, width 4, expand 4) with its
HF step generator and a PRM, on `arith:ops=16` questions, to depths 4, 8 and 16 steps. The
policy and PRM are the default `tdrm sft` architecture with random weights (speed does not
depend on training); a logits processor shapes every step like `DD+DD=DD` + separator,
digits sampled, so every step is 10 tokens and no step ends a solution early: the run to
depth d does exactly d steps. It measures, per depth: generated tokens, wall time, and
the split between generation and PRM scoring.

A search that regenerated its prefixes would generate ~(d+1)/2 steps' tokens per step;
here tokens per step are constant, and the gate holds them to it. Wall time per step
stays flat too: the policy
continues every kept prefix from its KV cache and the PRM runs only the new step's
tokens on the parent's cached keys/values (re-reading the prefix instead, as the first
version did, measured 1.64 here: the prefix prefill dominates on a CPU with a model this
small). Needs: per-step wall time at depth 16 / at depth 4 <= 1.5, and generated tokens
per step at depth 16 / at depth 4 within 10% of 1 (a search charged for its prefixes
again would show ~3.4).
Each depth runs `--repeats` times (best kept), interleaved, so background load hits all
depths alike. The last lines print that ratio.

    python bench/search_cost.py [--problems 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import policy_folder, report
from transformers import LogitsProcessor, LogitsProcessorList

from tdrm_cli.configs.sample import SearchConfig
from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
from tdrm_cli.search.methods import METHODS
from tdrm_cli.search.policy import HFStepPolicy
from tdrm_cli.search.scoring import make_scorer
from tdrm_cli.steps import read_policy_meta
from tdrm_cli.tasks import load_task

DEPTHS = (4, 8, 16)
WALL_NEEDED, TOKENS_NEEDED = 1.5, 0.1  # s/step ratio at most; tokens/step ratio off 1 at most
TEMPLATE = "DD+DD=DD\n\n"  # D: a sampled digit; everything else is forced


class StepShape(LogitsProcessor):
    """Forces the next character of TEMPLATE, counted from the row's last separator."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.digits = torch.tensor(tokenizer.encode("0123456789", add_special_tokens=False))
        self.literal = {
            ch: tokenizer.encode(ch, add_special_tokens=False)[0] for ch in set(TEMPLATE) - {"D"}
        }

    def __call__(self, input_ids, scores):
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, tail in enumerate(
            self.tokenizer.batch_decode(input_ids[:, -12:], skip_special_tokens=True)
        ):
            k = (len(tail) - tail.rfind("\n\n") - 2) % len(TEMPLATE)
            if TEMPLATE[k] == "D":
                allowed[row, self.digits] = True
            else:
                allowed[row, self.literal[TEMPLATE[k]]] = True
        return scores.masked_fill(~allowed, float("-inf"))


def build(workdir: Path, batch_size: int) -> tuple[HFStepPolicy, PRM]:
    base = str(policy_folder(workdir / "policy"))
    policy = HFStepPolicy(base, batch_size=batch_size, max_step_tokens=16)
    policy.generate_kwargs = {
        "logits_processor": LogitsProcessorList([StepShape(policy.tokenizer)])
    }
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    model = load_value_model(base, tokenizer.pad_token_id)
    return policy, PRM(model, tokenizer, prm_meta(tokenizer, read_policy_meta(base), agg="last"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    task = load_task("arith:ops=16")
    questions = [p.question for p in task.problems("test", args.problems)]
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policy, prm = build(Path(tmp), args.batch_size)
        for _ in range(args.repeats):
            for depth in DEPTHS:
                cfg = SearchConfig(
                    policy="bench",
                    prm=["bench"],
                    beam_width=4,
                    expand=4,
                    agg="last",
                    max_depth=depth,
                    max_step_tokens=16,
                    max_new_tokens=100_000,
                    batch_size=args.batch_size,
                )
                start = time.perf_counter()
                result = METHODS["beam"](
                    questions, policy, make_scorer(prm, args.batch_size), task, cfg, seed=0
                )
                wall = time.perf_counter() - start
                if depth not in best or wall < best[depth]["wall"]:
                    best[depth] = {
                        "wall": wall,
                        "steps": result.depth,
                        "tokens": sum(result.tokens),
                        "generate": result.generate_s,
                        "score": result.score_s,
                    }
    print(
        f"beam search, width 4 x expand 4, {args.problems} problems, best of {args.repeats}",
        file=sys.stderr,
    )
    print(
        f"{'depth':>5} {'steps':>5} {'tokens':>7} {'tokens/step':>11} {'wall s':>7} {'s/step':>7} {'generate s':>10} {'score s':>8}"
    )
    for depth in DEPTHS:
        b = best[depth]
        print(
            f"{depth:>5} {b['steps']:>5} {b['tokens']:>7} {b['tokens'] / b['steps']:>11.1f} {b['wall']:>7.2f} "
            f"{b['wall'] / b['steps']:>7.3f} {b['generate']:>10.2f} {b['score']:>8.2f}"
        )
    shallow, deep = best[DEPTHS[0]], best[DEPTHS[-1]]
    token_ratio = (deep["tokens"] / deep["steps"]) / (shallow["tokens"] / shallow["steps"])
    ratio = (deep["wall"] / deep["steps"]) / (shallow["wall"] / shallow["steps"])
    ok = ratio <= WALL_NEEDED and abs(token_ratio - 1) <= TOKENS_NEEDED
    print(
        f"tokens per step, depth {DEPTHS[-1]} / depth {DEPTHS[0]}: {token_ratio:.2f} "
        f"(needs within {TOKENS_NEEDED:.0%} of 1)"
    )
    print(
        f"per-step wall time, depth {DEPTHS[-1]} / depth {DEPTHS[0]}: {ratio:.2f} "
        f"(needs <= {WALL_NEEDED})"
    )
    print("PASS" if ok else "FAIL")
    return report(
        f"`search_cost`: beam search s/step, depth {DEPTHS[-1]} / depth {DEPTHS[0]}",
        ratio,
        f"<= {WALL_NEEDED} and tokens/step ratio within {TOKENS_NEEDED:.0%} of 1",
        ok,
        f"tokens/step ratio {token_ratio:.2f}",
    )


if __name__ == "__main__":
    sys.exit(main())
