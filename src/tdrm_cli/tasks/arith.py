"""`arith`: multi-step arithmetic whose every step can be checked exactly.

A problem is a left-to-right chain such as `12+7-3+9`. The reference solution has one
step per operation and a final answer step, joined by the separator:

    12+7=19 | 19-3=16 | 16+9=25 | answer 25

With `mod=M` every result is taken modulo M (`arith:mul=true,mod=10`: `7*3=1`), so a
running value cannot be read off the question without the steps before it.

A step is correct when it applies the right operation to the true running value and
states the true result; the answer step is correct when it states the gold answer.
Train and test problems are disjoint (split by a hash of the question) and
deterministic for a given `seed` and difficulty.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from tdrm_cli.errors import UsageError
from tdrm_cli.tasks import Problem

STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
ANSWER_RE = re.compile(r"^\s*answer\s*:?\s*(-?\d+)\s*$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithTask:
    ops: int = 4
    """Operations per problem (= computation steps)."""
    max_operand: int = 15
    """Operands are drawn from 1..max_operand."""
    max_value: int = 99
    """Running values stay within 0..max_value."""
    mul: bool = False
    """Allow `*` by small factors (harder)."""
    mod: int = 0
    """When > 0, every result is taken modulo `mod` (values 0..mod-1, `*` by any operand):
    no running value can be read off the question without the steps before it."""
    seed: int = 0
    """Shifts which problems are generated (the split stays disjoint)."""
    name: str = "arith"

    def __post_init__(self) -> None:
        if self.ops < 1 or self.max_operand < 1 or self.max_value < self.max_operand:
            raise UsageError(
                "--task arith: need ops >= 1, max_operand >= 1, max_value >= max_operand"
            )
        if self.mod < 0 or self.mod == 1:
            raise UsageError("--task arith: need mod = 0 (off) or mod >= 2")

    @classmethod
    def from_options(cls, **options: str) -> ArithTask:
        types = {
            "ops": int,
            "max_operand": int,
            "max_value": int,
            "mul": _as_bool,
            "mod": int,
            "seed": int,
        }
        kwargs = {}
        for key, value in options.items():
            if key not in types:
                raise UsageError(
                    f"--task arith: unknown option '{key}' (known: {', '.join(types)})"
                )
            try:
                kwargs[key] = types[key](value)
            except ValueError:
                raise UsageError(f"--task arith: option '{key}' has bad value '{value}'") from None
        return cls(**kwargs)

    # ------------------------------------------------------------------ problems

    def problems(self, split: str, n: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise UsageError(f"--split {split}: expected train or test")
        key = f"arith|{split}|{self.seed}|{self.ops}|{self.max_operand}|{self.max_value}|{self.mul}"
        rng = random.Random(key + (f"|mod{self.mod}" if self.mod else ""))
        out: list[Problem] = []
        while len(out) < n:
            start, ops, values = self._draw(rng)
            question = str(start) + "".join(f"{op}{b}" for op, b in ops)
            if _is_test(question) != (split == "test"):
                continue
            extra = {"start": start, "ops": [[op, b] for op, b in ops], "values": values}
            out.append(Problem(f"arith-{split}-{len(out):05d}", question, str(values[-1]), extra))
        return out

    def _draw(self, rng: random.Random) -> tuple[int, list[tuple[str, int]], list[int]]:
        value = start = rng.randint(1, self.max_operand)
        ops, values = [], []
        while len(ops) < self.ops:
            op = rng.choice("+-*" if self.mul else "+-")
            if self.mod:
                b = rng.randint(2 if op == "*" else 1, self.max_operand)
                ops.append((op, b))
                value = OPS[op](value, b) % self.mod
                values.append(value)
                continue
            b = rng.randint(2, 3) if op == "*" else rng.randint(1, self.max_operand)
            new = OPS[op](value, b)
            if 0 <= new <= self.max_value:
                ops.append((op, b))
                values.append(new)
                value = new
        return start, ops, values

    def reference_steps(self, problem: Problem) -> list[str]:
        before = [problem.extra["start"], *problem.extra["values"][:-1]]
        steps = [
            f"{a}{op}{b}={c}"
            for a, (op, b), c in zip(
                before, problem.extra["ops"], problem.extra["values"], strict=True
            )
        ]
        return [*steps, f"answer {problem.gold}"]

    # ------------------------------------------------------------------ checking

    def extract_answer(self, steps: list[str]) -> str | None:
        for step in reversed(steps):
            match = ANSWER_RE.match(step)
            if match:
                return str(int(match.group(1)))
        return None

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        if answer is None:
            return False
        try:
            return int(answer) == int(problem.gold)
        except ValueError:
            return False

    def step_truth(self, problem: Problem, steps: list[str]) -> list[int]:
        before = [problem.extra["start"], *problem.extra["values"][:-1]]
        truth = []
        for i, step in enumerate(steps):
            if i < len(problem.extra["ops"]):
                match = STEP_RE.match(step)
                op, b = problem.extra["ops"][i]
                ok = bool(match) and (
                    int(match.group(1)) == before[i]
                    and match.group(2) == op
                    and int(match.group(3)) == b
                    and int(match.group(4)) == problem.extra["values"][i]
                )
            elif i == len(problem.extra["ops"]):
                ok = self.is_correct(problem, self.extract_answer([step]))
            else:
                ok = False
            truth.append(int(ok))
        return truth


def _is_test(question: str) -> bool:
    return int(hashlib.sha1(question.encode()).hexdigest(), 16) % 10 == 0


def _as_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValueError(value)
