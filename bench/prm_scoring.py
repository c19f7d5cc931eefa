"""Single-pass PRM scoring vs scoring every step prefix as its own sequence, batched alike.

Same model, same 256 solutions of 8 steps. Single pass (`PRM.score`): one forward per
solution (batched, length-bucketed) reads all step values. Per prefix, batched: every
step prefix as its own sequence, value at its last token, through the same batching
(`PRM.score_encoded`), so the only difference is the tokens each way runs: what the
single pass saves. Also shown: the reference implementation's way (one forward pass per
prefix, no padding), which the values are checked against too.
Needs: batched per-prefix time / single-pass time >= 2 (best of 3 each, interleaved)
and max |difference| < 1e-4. The last lines print the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import arith_solutions, policy_folder, report

from tdrm_cli.prm import PRM, Encoded, load_tokenizer, load_value_model, prm_meta
from tdrm_cli.steps import read_policy_meta

N, STEPS, BATCH, REPEATS = 256, 8, 32, 3
NEEDED = 2.0


def per_prefix(prm: PRM, questions, solutions) -> list[list[float]]:
    out = []
    for question, steps in zip(questions, solutions, strict=True):
        row = []
        for t in range(1, len(steps) + 1):
            ids = prm.encode(question, steps[:t]).ids
            with torch.inference_mode():
                logits = prm.model(input_ids=torch.tensor([ids])).logits
            row.append(torch.sigmoid(logits[0, -1, 0]).item())
        out.append(row)
    return out


def per_prefix_batched(prm: PRM, questions, solutions) -> list[list[float]]:
    """Every prefix as its own sequence (value at its last token), batched like the single pass."""
    prefixes = []
    for question, steps in zip(questions, solutions, strict=True):
        for t in range(1, len(steps) + 1):
            e = prm.encode(question, steps[:t])
            prefixes.append(Encoded(e.ids, [e.ends[-1]], e.prompt_len))
    flat = [row[0] for row in prm.score_encoded(prefixes, BATCH)]
    out, i = [], 0
    for steps in solutions:
        out.append(flat[i : i + len(steps)])
        i += len(steps)
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = policy_folder(Path(tmp) / "policy")
        tokenizer = load_tokenizer(str(base))
        torch.manual_seed(0)
        model = load_value_model(str(base), tokenizer.pad_token_id)
        prm = PRM(model, tokenizer, prm_meta(tokenizer, read_policy_meta(base)))
    questions, solutions, _ = arith_solutions(N, STEPS)
    prm.score(questions[:BATCH], solutions[:BATCH], BATCH)  # warm-up
    t_single, t_batched = float("inf"), float("inf")
    for _ in range(REPEATS):  # interleaved, best kept: background load hits both alike
        seconds, single = timed(prm.score, questions, solutions, BATCH)
        t_single = min(t_single, seconds)
        seconds, batched = timed(per_prefix_batched, prm, questions, solutions)
        t_batched = min(t_batched, seconds)
    t_prefix, prefix = timed(per_prefix, prm, questions, solutions)
    diff = max(max_diff(single, prefix), max_diff(single, batched))
    ratio = t_batched / t_single
    print(f"threads {torch.get_num_threads()}, {N} solutions x {STEPS} steps, batch {BATCH}")
    print(f"single pass           {t_single:8.3f} s   (best of {REPEATS})")
    print(f"per prefix (batched)  {t_batched:8.3f} s   {ratio:6.2f}x slower (best of {REPEATS})")
    print(f"per prefix (1/pass)   {t_prefix:8.3f} s   {t_prefix / t_single:6.2f}x slower (once)")
    print(f"max |difference|      {diff:.2e}")
    ok = ratio >= NEEDED and diff < 1e-4
    print(
        f"{'PASS' if ok else 'FAIL'}: speed-up {ratio:.2f} over batched per-prefix scoring "
        f"(needs >= {NEEDED:g}), max diff {diff:.2e} (needs < 1e-4)"
    )
    return report(
        "`prm_scoring`: batched per-prefix / single-pass scoring time",
        ratio,
        f">= {NEEDED:g} and max diff < 1e-4",
        ok,
        f"max diff {diff:.1e}",
    )


if __name__ == "__main__":
    sys.exit(main())
