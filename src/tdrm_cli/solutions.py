"""A graded solution: the one record that collect, bon, search, eval and rl build and read.

A record is a dict with (a subset of) these fields, in this meaning everywhere:

- `problem_id`, `prompt` (the question text), `gold` (the reference answer);
- `steps` (the solution split on the policy's separator), `answer` (the final answer
  the task's parser found, or None), `correct` (the verifier's verdict, 0/1);
- `step_truth` (exact prefix correctness per step, from tasks that can check a step;
  None otherwise), `step_labels` (Monte-Carlo labels per step, from collect);
- `policy` (the model that wrote it), `sample_idx` (its index among the problem's samples),
  `num_tokens` (generated tokens).

`FIELD_TYPES` is the Arrow type of each field, so every Parquet file a stage writes
(`rollouts.parquet`, `scores.parquet`) spells a field the same way; `row_problem` is the
one validator of a record read back from such a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.steps import (
    DEFAULT_SEPARATOR,
    build_prompt,
    prompt_format,
    read_policy_meta,
    split_steps,
)
from tdrm_cli.tasks import Problem, Task, grade

ROLLOUTS = "rollouts.parquet"
ROLLOUT_COLUMNS = (
    "problem_id",
    "prompt",
    "gold",
    "steps",
    "answer",
    "correct",
    "step_labels",
    "step_truth",
    "policy",
    "sample_idx",
)


def field_types() -> dict[str, Any]:
    """The Arrow type of every record field (pyarrow imported only when a file is written)."""
    import pyarrow as pa

    text, texts, floats = pa.string(), pa.list_(pa.string()), pa.list_(pa.float64())
    return {
        "problem_id": text,
        "prompt": text,
        "gold": text,
        "steps": texts,
        "answer": text,
        "correct": pa.int64(),
        "step_labels": floats,
        "step_truth": pa.list_(pa.int64()),
        "policy": text,
        "sample_idx": pa.int64(),
        "num_tokens": pa.int64(),
    }


def schema(columns: Sequence[str], extra: dict[str, Any] | None = None):
    """An Arrow schema of `columns` in the given order: record fields with their one type,
    stage-specific fields with the type `extra` gives them."""
    import pyarrow as pa

    types = {**field_types(), **(extra or {})}
    return pa.schema([(name, types[name]) for name in columns])


def records_table(rows: list[dict[str, Any]], columns: Sequence[str], extra=None):
    """Records as an Arrow table of `columns` (see `schema`); other keys are left out."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema(columns, extra))


def parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- sample -> split -> grade


def separator_of(meta: dict[str, Any]) -> str:
    """The step separator of a policy or PRM's metadata (absent or null: the default)."""
    return meta.get("separator") or DEFAULT_SEPARATOR


def split_and_grade(
    task: Task, problem: Problem, text: str, separator: str
) -> tuple[list[str], str | None, int]:
    """(steps, final answer, 0/1 verdict) of a generated solution: the one way text is graded."""
    steps = split_steps(text, separator)
    answer, correct = grade(task, problem, steps)
    return steps, answer, correct


def graded_steps(
    task: Task, problem: Problem, steps: list[str], truth: bool = True
) -> dict[str, Any]:
    """A solution already split into steps, checked: the record's task-dependent fields
    (`step_truth` None unless `truth`)."""
    answer, correct = grade(task, problem, steps)
    return {
        "problem_id": problem.id,
        "prompt": problem.question,
        "gold": problem.gold,
        "steps": steps,
        "answer": answer,
        "correct": correct,
        "step_truth": task.step_truth(problem, steps) if truth else None,
    }


def graded(task: Task, problem: Problem, text: str, separator: str) -> dict[str, Any]:
    """A generated solution split into steps and checked: the record's task-dependent fields."""
    return graded_steps(task, problem, split_steps(text, separator))


@dataclass
class Policy:
    """A policy ready to sample from: its generation backend, prompt metadata and separator."""

    backend: Any
    meta: dict[str, Any]
    separator: str
    prompt_format: str

    def prompt(self, question: str) -> str:
        return build_prompt(self.backend.tokenizer, question, self.meta)

    def sample(
        self,
        task: Task,
        problems: list[Problem],
        sampling: Any,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """`sampling.n` graded solutions per problem (see `sample_graded`)."""
        prompts = [self.prompt(p.question) for p in problems]
        return sample_graded(
            self.backend, task, problems, prompts, sampling, self.separator, on_batch
        )


def load_policy(
    model_path: str,
    backend: str = "hf",
    batch_size: int = 64,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Policy:
    """A policy model folder behind the named generation backend, with its prompt metadata."""
    from tdrm_cli.generation import load_backend

    loaded = load_backend(
        backend,
        model_path,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    meta = read_policy_meta(model_path)
    return Policy(loaded, meta, separator_of(meta), prompt_format(loaded.tokenizer, meta))


def sample_graded(
    backend: Any,
    task: Task,
    problems: list[Problem],
    prompts: list[str],
    sampling: Any,
    separator: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[list[dict[str, Any]]]:
    """`sampling.n` solutions per problem from a generation backend, each graded; per problem."""
    completions = backend.generate(prompts, sampling, on_batch=on_batch)
    return [
        [
            {
                **graded(task, problem, completion.text, separator),
                "sample_idx": k,
                "num_tokens": completion.num_tokens,
            }
            for k, completion in enumerate(samples)
        ]
        for problem, samples in zip(problems, completions, strict=True)
    ]


# ---------------------------------------------------------------- reading records back


ROLLOUT_STAGES = ("collect", "import-data")
"""The stages whose run folders hold a `rollouts.parquet` of graded solutions."""


def rollouts_table(
    run: str | Path,
    role: str,
    columns: tuple[str, ...],
    stages: tuple[str, ...] = ROLLOUT_STAGES,
):
    """(path, pyarrow Table) of the `rollouts.parquet` of a complete run of one of `stages`
    (collect or import-data) given as `--role`.

    An incomplete run, a missing or damaged file, or a missing one of `columns` is a
    one-line UsageError naming the file.
    """
    import pyarrow.parquet as pq

    from tdrm_cli.runs import require_complete

    require_complete(run, role, stages)
    path = Path(run) / ROLLOUTS
    if not path.is_file():
        raise UsageError(f"--{role} {run}: no {ROLLOUTS}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise UsageError(f"{path}: unreadable parquet ({type(e).__name__})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
    return path, table


def is_list(value: Any) -> bool:
    """A list cell as pandas reads it from Parquet (a numpy array), or a plain list/tuple."""
    import numpy as np

    return isinstance(value, list | tuple | np.ndarray)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: Any) -> bool:
    import numpy as np

    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _shown(value: Any) -> str:
    """repr() of a cell, numpy scalars shown as the Python value they hold."""
    return repr(value.item() if hasattr(value, "item") and not is_list(value) else value)


def _text(row: dict[str, Any], key: str, what: str) -> str | None:
    value = row[key]
    if _is_null(value):
        return f"field '{key}' is empty"
    if not isinstance(value, str) or not value.strip():
        got = "blank" if isinstance(value, str) else _shown(value)
        return f"field '{key}' is {got}, expected {what}"
    return None


def _per_step(row: dict[str, Any], key: str, n_steps: int, why: str | None) -> str | None:
    """`step_labels` / `step_truth`: one value per step (0/1 for truth, [0, 1] for labels)."""
    values = row.get(key)
    if values is None or (not is_list(values) and _is_null(values)):
        return f"field '{key}' is empty, but {why} needs it" if why else None
    kind = "0/1" if key == "step_truth" else "numbers"
    if not is_list(values):
        return f"field '{key}' is a {type(values).__name__}, expected a list of {kind}"
    if len(values) != n_steps:
        unit = "labels" if key == "step_labels" else "values"
        return f"field '{key}' has {len(values)} {unit} for {n_steps} steps"
    for j, value in enumerate(values):
        if key == "step_truth" and (not _is_number(value) or value not in (0, 1)):
            return f"field '{key}' holds {_shown(value)} at step {j}, expected 0 or 1"
        if not _is_number(value):
            return f"field '{key}' holds {_shown(value)} at step {j}, expected a number"
        if math.isnan(value):
            return f"field '{key}' is NaN at step {j}"
        if not 0.0 <= value <= 1.0:
            return f"field '{key}' is {_shown(value)} at step {j}, expected a value in [0, 1]"
    return None


def row_problem(row: dict[str, Any], needs: dict[str, str] | None = None) -> str | None:
    """What makes one record unusable, as "field 'F' ...", or None. Checks the fields the row
    holds; `needs` maps `step_labels` / `step_truth` to the option that needs them filled."""
    needs = needs or {}
    for key, what in (("problem_id", "text"), ("prompt", "the question text"), ("gold", "text")):
        problem = _text(row, key, what) if key in row else None
        if problem:
            return problem
    if "sample_idx" in row:
        value = row["sample_idx"]
        if not _is_number(value) or value != int(value):
            return f"field 'sample_idx' is {_shown(value)}, expected an integer"
    if "answer" in row and not (row["answer"] is None or isinstance(row["answer"], str)):
        return f"field 'answer' is {_shown(row['answer'])}, expected text or null"
    correct = row["correct"]
    if not _is_number(correct) or correct not in (0, 1):
        return f"field 'correct' is {_shown(correct)}, expected 0 or 1"
    steps = row["steps"]
    if steps is not None and (not is_list(steps) or not all(isinstance(s, str) for s in steps)):
        got = f"a {type(steps).__name__}" if not is_list(steps) else "a list holding non-strings"
        return f"field 'steps' is {got}, expected a list of strings"
    n_steps = 0 if steps is None else len(steps)
    for key in ("step_truth", "step_labels"):
        problem = (
            _per_step(row, key, n_steps, needs.get(key)) if key in row or key in needs else None
        )
        if problem:
            return problem
    return None
