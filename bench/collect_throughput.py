"""Generated tokens/s of `tdrm collect` (--mc-rollouts 0) vs a raw batched `model.generate` loop.

Both sides use the same model, prompts, batch size and sampling settings, in one process.
The collect side is timed end to end (`collect.run`: model load, prompts, generation,
splitting, verifying, shard and table writes); the raw side only times its generate loop.
Each side runs `--repeats` times, interleaved, and keeps its best, so background load on
a shared machine hits both alike. Needs: ratio collect/raw >= 0.7; the last lines print it.

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
from tdrm_cli.stages import collect, sft
from tdrm_cli.steps import build_prompt, read_policy_meta
from tdrm_cli.tasks import load_task


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


def raw_tokens_per_s(model_path: str, args: argparse.Namespace) -> float:
    """The baseline: plain batched `generate`, counting tokens up to and including EOS."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path)  # the folder's own tokenizer, as `collect` uses
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = (
        AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if device == "cuda" else torch.float32
        )
        .to(device)
        .eval()
    )
    meta = read_policy_meta(model_path)
    problems = load_task(args.task).problems("train", args.problems)
    flat = [build_prompt(tokenizer, p.question, meta) for p in problems for _ in range(args.n)]
    eos = tokenizer.eos_token_id
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(flat), args.batch_size):
        enc = tokenizer(flat[i : i + args.batch_size], return_tensors="pt", padding=True).to(device)
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens / (time.perf_counter() - start)


def collect_tokens_per_s(
    policy: str, workdir: Path, repeat: int, args: argparse.Namespace
) -> tuple[float, float]:
    """(end-to-end tokens/s of `collect.run`, the stage's own generation-loop tokens/s)."""
    cfg = CollectConfig(
        policy=policy,
        task=args.task,
        problems=args.problems,
        n=args.n,
        mc_rollouts=0,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        out=str(workdir / f"collect-{repeat}"),
        seed=repeat,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = collect.run(cfg)
    seconds = time.perf_counter() - start
    metrics = read_manifest(out)["metrics"]
    return metrics["generated_tokens"] / seconds, metrics["tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", help="Policy run folder or HF model folder (default: train a quick tiny one)."
    )
    parser.add_argument("--task", default="arith")
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tdrm-bench-") as tmp:
        workdir = Path(tmp)
        policy = args.policy or quick_policy(workdir)
        model_path, _ = resolve_model(policy, "policy")
        raw, end_to_end, in_stage = [], [], []
        for repeat in range(args.repeats):
            raw.append(raw_tokens_per_s(model_path, args))
            e2e, stage = collect_tokens_per_s(policy, workdir, repeat, args)
            end_to_end.append(e2e)
            in_stage.append(stage)
    print(
        f"policy {policy}: {args.problems} problems x n={args.n}, batch {args.batch_size}, "
        f"max {args.max_new_tokens} new tokens, best of {args.repeats}"
    )
    print(f"raw generate loop      {max(raw):10.1f} tokens/s")
    print(
        f"tdrm collect (stage)   {max(in_stage):10.1f} tokens/s  (generation loop, shards included)"
    )
    print(
        f"tdrm collect (run)     {max(end_to_end):10.1f} tokens/s  (end to end, model load included)"
    )
    ratio = max(end_to_end) / max(raw)
    print(f"ratio: {ratio:.3f}")
    return report(
        "`collect_throughput`: tdrm collect / raw generate tokens/s", ratio, ">= 0.7", ratio >= 0.7
    )


if __name__ == "__main__":
    sys.exit(main())
