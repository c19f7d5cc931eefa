"""Wall time of `tdrm collect` with MC labels vs the same generations in a raw `model.generate` loop.

The collect side is `collect.run` end to end (model load, prompts, sampling, splitting,
verifying, `--mc-rollouts K` continuations of every proper step prefix, grading them,
shard and table writes). The raw side does the same generations with a plain batched
`model.generate` loop: the `--n` samples of every prompt, then K continuations of every
proper step prefix of those samples (prompt + steps[:t] + separator, sorted by length
like collect sorts them), with the same batch size, sampling settings and per-batch seeds,
so both sides generate the same sequences and the same number of tokens (both are shown).
One shard holds every problem, so the batches are the same too.

The gate is wall time for the same work, not tokens/s (a collect that generated more than
it needs would raise its tokens/s): collect's wall time / the raw loop's <= 1.4, and
collect's generated tokens within 10% of the raw loop's (equal while the seeds agree;
another seed scheme moves them by a few percent, generating too much or too little by
far more). Each side
runs `--repeats` times, interleaved, and keeps its best, so background load on a shared
machine hits both alike. The last lines print the ratio.

    python bench/collect_throughput.py                      # trains a quick tiny policy first
    python bench/collect_throughput.py --policy runs/sft    # any policy run or HF model folder
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from common import report

from tdrm_cli.configs.sample import CollectConfig
from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.generation import load_tokenizer
from tdrm_cli.runs import read_manifest, resolve_model
from tdrm_cli.solutions import separator_of
from tdrm_cli.stages import collect, sft
from tdrm_cli.stages.collect import shard_seed
from tdrm_cli.steps import build_prompt, join_steps, read_policy_meta, split_steps
from tdrm_cli.tasks import load_task

NEEDED = 1.4
TOKENS = 0.1  # collect's generated tokens may differ from the raw loop's by this share at most


def quick_policy(workdir: Path) -> str:
    cfg = SFTConfig(
        out=str(workdir / "sft"),
        max_steps=150,
        train_problems=3000,
        hidden_size=64,
        layers=2,
        heads=2,
        eval_problems=0,
        save_steps=1000,
    )
    with contextlib.redirect_stdout(sys.stderr):
        return str(sft.run(cfg))


class RawLoop:
    """The baseline: the policy loaded once, and plain batched `generate` calls."""

    def __init__(self, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = load_tokenizer(model_path)  # the folder's own tokenizer, as collect's
        self.tokenizer.padding_side = "left"
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.meta = read_policy_meta(model_path)
        self.separator = separator_of(self.meta)

    def generate(self, texts: list[str], k: int, seed: int, args) -> tuple[list[str], int]:
        """K completions of every text (text without EOS) and the tokens generated, EOS included."""
        import torch

        flat = [t for t in texts for _ in range(k)]
        eos, out_texts, tokens = self.tokenizer.eos_token_id, [], 0
        for start in range(0, len(flat), args.batch_size):
            enc = self.tokenizer(
                flat[start : start + args.batch_size], return_tensors="pt", padding=True
            ).to(self.device)
            torch.manual_seed(seed * 1_000_003 + start)  # collect's per-batch seed
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                stop = row.index(eos) if eos in row else None
                tokens += len(row) if stop is None else stop + 1
                out_texts.append(self.tokenizer.decode(row[:stop], skip_special_tokens=True))
        return out_texts, tokens

    def run(self, args, seed: int) -> tuple[float, int]:
        """(seconds, generated tokens) of the samples and the MC continuations of one seed."""
        problems = load_task(args.task).problems("train", args.problems)
        prompts = [build_prompt(self.tokenizer, p.question, self.meta) for p in problems]
        start = time.perf_counter()
        samples, tokens = self.generate(prompts, args.n, shard_seed(seed, 0, "samples"), args)
        prefixes = []
        for i, text in enumerate(samples):
            steps = split_steps(text, self.separator)
            prompt = prompts[i // args.n]
            prefixes += [
                prompt + join_steps(steps[:t], self.separator) + self.separator
                for t in range(1, len(steps))
            ]
        prefixes.sort(key=len)
        _, mc_tokens = self.generate(prefixes, args.mc_rollouts, shard_seed(seed, 0, "mc"), args)
        return time.perf_counter() - start, tokens + mc_tokens


def collect_seconds(policy: str, workdir: Path, seed: int, args) -> tuple[float, int]:
    """(seconds of `collect.run` end to end, the tokens its manifest says it generated)."""
    cfg = CollectConfig(
        policy=policy,
        task=args.task,
        problems=args.problems,
        n=args.n,
        mc_rollouts=args.mc_rollouts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        shard_size=args.problems,
        out=str(workdir / f"collect-{seed}"),
        seed=seed,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = collect.run(cfg)
    seconds = time.perf_counter() - start
    return seconds, read_manifest(out)["metrics"]["generated_tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", help="Policy run folder or HF model folder (default: train a quick tiny one)."
    )
    parser.add_argument("--task", default="arith")
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--mc-rollouts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tdrm-bench-") as tmp:
        workdir = Path(tmp)
        policy = args.policy or quick_policy(workdir)
        model_path, _ = resolve_model(policy, "policy")
        raw_loop = RawLoop(model_path)
        raw_loop.run(args, seed=-1)  # warm-up: first batches of each shape allocate
        raw, ours = [], []
        for repeat in range(args.repeats):  # the same seed on both sides: the same sequences
            raw.append(raw_loop.run(args, seed=repeat))
            ours.append(collect_seconds(policy, workdir, repeat, args))
    raw_s, ours_s = min(s for s, _ in raw), min(s for s, _ in ours)
    raw_tokens, ours_tokens = sum(t for _, t in raw), sum(t for _, t in ours)
    print(
        f"policy {policy}: {args.problems} problems x n={args.n}, --mc-rollouts "
        f"{args.mc_rollouts}, batch {args.batch_size}, max {args.max_new_tokens} new tokens, "
        f"best of {args.repeats}"
    )
    print(f"raw generate loop     {raw_s:8.2f} s   tokens by repeat {[t for _, t in raw]}")
    print(f"tdrm collect (run)    {ours_s:8.2f} s   tokens by repeat {[t for _, t in ours]}")
    print(f"seconds by repeat: raw {[round(s, 2) for s, _ in raw]}")
    print(f"                   collect {[round(s, 2) for s, _ in ours]}")
    ratio, tokens = ours_s / raw_s, ours_tokens / raw_tokens
    ok = ratio <= NEEDED and abs(tokens - 1) <= TOKENS
    print(
        f"{'PASS' if ok else 'FAIL'}: wall time ratio collect/raw {ratio:.3f} (needs <= {NEEDED}), "
        f"tokens collect/raw {tokens:.3f} (needs within {TOKENS:.0%} of 1)"
    )
    return report(
        "`collect_throughput`: tdrm collect (MC labels) / raw generate wall time, same work",
        ratio,
        f"<= {NEEDED} and tokens within {TOKENS:.0%}",
        ok,
        f"tokens collect/raw {tokens:.3f}",
    )


if __name__ == "__main__":
    sys.exit(main())
