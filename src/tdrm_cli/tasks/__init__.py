"""Tasks: where problems come from and how answers and steps are checked.

A task is any object with the `Task` protocol; `TASKS` maps names to factories, and
`load_task("name:key=val,key=val")` builds one. A name ending in one of FILE_SUFFIXES is
a file of problems (tasks/files.py). Callers never branch on task names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tdrm_cli.errors import UsageError


@dataclass
class Problem:
    id: str
    question: str
    gold: str
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str

    def problems(self, split: str, n: int) -> list[Problem]:
        """The first `n` problems of `split` ("train" or "test"), deterministic."""
        ...

    def extract_answer(self, steps: list[str]) -> str | None:
        """The final answer a solution gives, or None when it gives none."""
        ...

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        """Verifier verdict for a final answer."""
        ...

    def step_truth(self, problem: Problem, steps: list[str]) -> list[int] | None:
        """Exact 0/1 correctness of every step, or None when the task cannot tell."""
        ...


def grade(task: Task, problem: Problem, steps: list[str]) -> tuple[str | None, int]:
    """(the final answer `task` reads from a solution's steps, the verifier's 0/1 verdict on it)."""
    answer = task.extract_answer(steps)
    return answer, int(task.is_correct(problem, answer))


def _arith(**kw: str) -> Task:
    from tdrm_cli.tasks.arith import ArithTask

    return ArithTask.from_options(**kw)


def _gsm_symbolic(**kw: str) -> Task:
    from tdrm_cli.tasks.gsm import GSMSymbolicTask

    return GSMSymbolicTask.from_options(**kw)


TASKS: dict[str, Callable[..., Task]] = {"arith": _arith, "gsm-symbolic": _gsm_symbolic}
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def parse_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--task {spec}: option '{item}' is not key=value")
        options[key.strip()] = value.strip()
    return name.strip(), options


def load_task(spec: str) -> Task:
    name, options = parse_task_spec(spec)
    if name.endswith(FILE_SUFFIXES):
        from tdrm_cli.tasks.files import FileTask

        return FileTask.from_options(name, **options)
    if name not in TASKS:
        raise UsageError(
            f"--task {spec}: unknown task '{name}' (known: {', '.join(sorted(TASKS))}, "
            f"or a {'/'.join(FILE_SUFFIXES)} file)"
        )
    return TASKS[name](**options)
