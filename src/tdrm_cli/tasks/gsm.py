"""`gsm-symbolic`: GSM8K-style word problems from the `reasoning-gym` package.

Each problem is generated from a GSM8K template with fresh names and numbers and comes
with a step-by-step reference solution, one line per step, ending in `#### <answer>`.
Problems are numbered by their index in reasoning-gym's `gsm_symbolic` dataset for
`seed`; a hash of the question puts one in ten into `test`, so the splits are disjoint
and `problems(split, n)` is a prefix of `problems(split, m)` for n < m. Answers are
checked with math-verify (tasks/answers.py); steps have no exact truth.

reasoning-gym is an optional extra: `pip install 'tdrm-cli[gsm]'`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.tasks import Problem
from tdrm_cli.tasks.answers import FinalAnswerChecking, gold_answer

DATASET = "gsm_symbolic"
TEST_BUCKETS = 10  # one question in TEST_BUCKETS goes to test


@dataclass
class GSMSymbolicTask(FinalAnswerChecking):
    seed: int = 0
    """Which stream of generated problems (train and test stay disjoint for every seed)."""
    name: str = "gsm-symbolic"

    @classmethod
    def from_options(cls, **options: str) -> GSMSymbolicTask:
        unknown = set(options) - {"seed"}
        if unknown:
            raise UsageError(
                f"--task gsm-symbolic: unknown option '{sorted(unknown)[0]}' (known: seed)"
            )
        try:
            return cls(seed=int(options.get("seed", 0)))
        except ValueError:
            raise UsageError(
                f"--task gsm-symbolic: option 'seed' has bad value '{options['seed']}'"
            ) from None

    def problems(self, split: str, n: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise UsageError(f"--split {split}: expected train or test")
        # An item depends only on seed and index (its template comes from one seeded
        # `choices` call, whose prefix does not depend on `size`): a bigger size appends items.
        dataset = _reasoning_gym().create_dataset(
            DATASET, seed=self.seed, size=TEST_BUCKETS * 3 * n + 100
        )
        out: list[Problem] = []
        for index in range(len(dataset)):
            if len(out) == n:
                break
            item = dataset[index]
            if _is_test(item["question"]) != (split == "test"):
                continue
            solution = item["metadata"]["answer_cot"]
            extra = {"index": index, "solution": solution}
            out.append(
                Problem(
                    f"gsm-symbolic-{split}-{len(out):05d}",
                    item["question"],
                    gold_answer(str(item["answer"])),
                    extra,
                )
            )
        if len(out) < n:
            raise RuntimeError(
                f"gsm-symbolic: only {len(out)} {split} problems in {len(dataset)} items"
            )
        return out

    def reference_steps(self, problem: Problem) -> list[str]:
        return [line.strip() for line in problem.extra["solution"].splitlines() if line.strip()]


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise UsageError(
            "--task gsm-symbolic needs the reasoning-gym package: pip install 'tdrm-cli[gsm]'"
        ) from None
    return reasoning_gym


def _is_test(question: str) -> bool:
    return int(hashlib.sha1(question.encode()).hexdigest(), 16) % TEST_BUCKETS == 0
