"""Shared set-up for the benchmarks: a policy-sized random Qwen2 folder and arith solutions."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tdrm_cli.config import SFTConfig
from tdrm_cli.stages.sft import PROMPT_TEMPLATE, build_char_tokenizer, build_model
from tdrm_cli.steps import DEFAULT_SEPARATOR, POLICY_META
from tdrm_cli.tasks.arith import ArithTask


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
