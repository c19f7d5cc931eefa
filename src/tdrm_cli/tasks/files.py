"""File tasks: `--task data.jsonl` (or `.jsonl.gz`, `.parquet`), one problem per row.

Options after a colon map the fields and pick the split:

    --task data.jsonl:question=problem,answer=solution,test_fraction=0.2

- `question=NAME`, `answer=NAME`: the fields holding them (default `question`, `answer`).
  The answer may be a whole solution ("... #### 42"); its final answer is the gold, and
  its lines are the reference steps.
- `split=NAME`: a field saying `train` or `test` for every row (default: `split`, when the
  first row has it).
- `test_fraction=F`: without a split field, the share of rows hashed into `test` by their
  question (default 0.1), so a split never changes when rows are added or reordered.

The whole file is read and checked up front: a bad row stops with one line naming the
file, the line (JSONL) or row (Parquet), counted from 1, and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdrm_cli.errors import JSON_ERRORS, UsageError, check_text, first_line, json_reason
from tdrm_cli.tasks import Problem
from tdrm_cli.tasks.answers import FinalAnswerChecking, extract_answer, gold_answer

OPTIONS = ("question", "answer", "split", "test_fraction")


@dataclass
class Row:
    where: str
    """`data.jsonl line 7`: where the row came from, for messages and ids."""
    question: str
    solution: str
    split: str


@dataclass
class FileTask(FinalAnswerChecking):
    name: str
    """The file as given in the task spec."""
    rows: list[Row] = field(default_factory=list)

    @classmethod
    def from_options(cls, path: str, **options: str) -> FileTask:
        for key in options:
            if key not in OPTIONS:
                raise UsageError(
                    f"--task {path}: unknown option '{key}' (known: {', '.join(OPTIONS)})"
                )
        try:
            test_fraction = float(options.get("test_fraction", 0.1))
        except ValueError:
            test_fraction = -1.0
        if not 0.0 <= test_fraction <= 1.0:
            raise UsageError(f"--task {path}: test_fraction must be a number in [0, 1]")
        question_key, answer_key = (
            options.get("question", "question"),
            options.get("answer", "answer"),
        )
        split_key = options.get("split")
        rows = []
        for where, record in _records(path):
            if split_key is None and not rows:
                split_key = "split" if "split" in record else ""
            question = _text(record, question_key, where)
            split = (
                _split(record, split_key, where)
                if split_key
                else _hashed_split(question, test_fraction)
            )
            rows.append(Row(where, question, _text(record, answer_key, where), split))
        if not rows:
            raise UsageError(f"--task {path}: the file has no rows")
        return cls(name=path, rows=rows)

    def problems(self, split: str, n: int) -> list[Problem]:
        """The first `n` rows of `split` in file order (fewer when the file has fewer)."""
        if split not in ("train", "test"):
            raise UsageError(f"--split {split}: expected train or test")
        rows = [row for row in self.rows if row.split == split][:n]
        if not rows:
            raise UsageError(f"--task {self.name}: no {split} rows")
        stem = Path(self.name).name.split(".")[0]
        return [
            Problem(
                f"{stem}-{row.where.rsplit(' ', 1)[-1]}",
                row.question,
                gold_answer(row.solution),
                {"where": row.where, "solution": row.solution},
            )
            for row in rows
        ]

    def reference_steps(self, problem: Problem) -> list[str]:
        """The solution's lines when it marks its answer; else one `#### <gold>` step."""
        steps = [line.strip() for line in problem.extra["solution"].splitlines() if line.strip()]
        return steps if extract_answer("\n".join(steps)) is not None else [f"#### {problem.gold}"]


# ---------------------------------------------------------------- reading


def _records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not Path(path).is_file():
        raise UsageError(f"--task {path}: no such file")
    if path.endswith(".parquet"):
        yield from _parquet_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                where = f"{path} line {number}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UsageError(f"{where}: not valid UTF-8") from None
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except JSON_ERRORS as e:
                    raise UsageError(f"{where}: not valid JSON{json_reason(e)}") from None
                if not isinstance(record, dict):
                    raise UsageError(
                        f"{where}: expected a JSON object, got {type(record).__name__}"
                    )
                yield where, record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"{path}: unreadable ({e})") from None


def _parquet_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        first = first_line(e)
        raise UsageError(f"{path}: not a readable Parquet file ({first})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {number}", record


def _text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise UsageError(f"{where}: missing field '{key}'")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = "empty" if value is None else f"a {type(value).__name__}, expected text or a number"
        raise UsageError(f"{where}: field '{key}' is {kind}")
    if not str(value).strip():
        raise UsageError(f"{where}: field '{key}' is empty")
    return check_text(str(value), f"{where}: field '{key}'")


def _split(record: dict[str, Any], key: str, where: str) -> str:
    value = str(_text(record, key, where)).strip().lower()
    if value not in ("train", "test"):
        raise UsageError(f"{where}: field '{key}' is '{record[key]}', expected train or test")
    return value


def _hashed_split(question: str, test_fraction: float) -> str:
    bucket = (
        int(hashlib.sha1(question.encode("utf-8", "surrogatepass")).hexdigest()[:12], 16) / 16**12
    )
    return "test" if bucket < test_fraction else "train"
