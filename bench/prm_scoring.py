"""Single-pass PRM scoring vs scoring every prefix in its own forward pass.

Same model, same 256 solutions of 8 steps. Single pass: one forward per solution (batched,
length-bucketed) reads all step values. Per prefix (the reference implementation's way):
one forward per step prefix, value at its last token. Also shown: the per-prefix way with
the prefixes batched like the single pass, which isolates the saving in tokens.
Needs: speed-up >= 4x and max |difference| < 1e-4. The last lines print the ratio.
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

N, STEPS, BATCH = 256, 8, 32


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
    t_single, single = timed(prm.score, questions, solutions, BATCH)
    t_prefix, prefix = timed(per_prefix, prm, questions, solutions)
    t_batched, batched = timed(per_prefix_batched, prm, questions, solutions)
    diff = max(max_diff(single, prefix), max_diff(single, batched))
    ratio = t_prefix / t_single
    print(f"threads {torch.get_num_threads()}, {N} solutions x {STEPS} steps, batch {BATCH}")
    print(f"single pass           {t_single:8.3f} s")
    print(f"per prefix (1/pass)   {t_prefix:8.3f} s   {ratio:6.2f}x slower")
    print(f"per prefix (batched)  {t_batched:8.3f} s   {t_batched / t_single:6.2f}x slower")
    print(f"max |difference|      {diff:.2e}")
    ok = ratio >= 4 and diff < 1e-4
    print(
        f"speedup {ratio:.2f}"
        if ok
        else f"FAILED speedup {ratio:.2f} (need >= 4), max diff {diff:.2e} (need < 1e-4)"
    )
    return report(
        "`prm_scoring`: per-prefix / single-pass scoring time",
        ratio,
        ">= 4 and max diff < 1e-4",
        ok,
        f"max diff {diff:.1e}",
    )


if __name__ == "__main__":
    sys.exit(main())
