"""Shared set-up for the benchmarks: a policy-sized random Qwen2 folder, arith solutions, and
`report`, which prints the machine-readable last line that `bench/run_all.py` collects."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.stages.sft import PROMPT_TEMPLATE, build_char_tokenizer, build_model
from tdrm_cli.steps import DEFAULT_SEPARATOR, POLICY_META
from tdrm_cli.tasks.arith import ArithTask

BENCH_PREFIX = "BENCH "


def report(metric: str, ratio: float, goal: str, passed: bool, detail: str = "") -> int:
    """Print `BENCH {json}` (the script's last line) and return the exit code: 0 passed, 1 not.

    `goal` is the bound as text (">= 0.7"); `detail` is any other measured figure the goal
    depends on ("max diff 3.1e-07"). `bench/run_all.py` turns these lines into its table.
    """
    line = {"metric": metric, "ratio": round(float(ratio), 4), "goal": goal, "pass": bool(passed)}
    if detail:
        line["detail"] = detail
    print(BENCH_PREFIX + json.dumps(line), flush=True)
    return 0 if passed else 1


def policy_folder(
    path: Path, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0
) -> Path:
    """The default `tdrm sft` architecture with random weights (speed does not depend on training)."""
    import torch

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    model = build_model(SFTConfig(hidden_size=hidden, layers=layers, heads=heads), tokenizer)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    meta = {"prompt_template": PROMPT_TEMPLATE, "separator": DEFAULT_SEPARATOR, "task": "arith"}
    (path / POLICY_META).write_text(json.dumps(meta))
    return path


def arith_solutions(
    n: int, steps: int = 8, seed: int = 0
) -> tuple[list[str], list[list[str]], list[int]]:
    """n questions with `steps`-step reference solutions and a random verdict for each."""
    task = ArithTask(ops=steps - 1)
    problems = task.problems("train", n)
    rng = random.Random(seed)
    return (
        [p.question for p in problems],
        [task.reference_steps(p) for p in problems],
        [rng.randint(0, 1) for _ in problems],
    )
