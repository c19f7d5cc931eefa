"""`tdrm import-data FILE --format F`: public step-labelled data as a collect-shaped run.

The file is read record by record through the format's reader (`public_data.FORMATS`);
every solution becomes one row of `rollouts.parquet` in the record layout collect
writes (`solutions.ROLLOUT_COLUMNS`), so `train-prm --data` takes the run like a
collect run. Rows record no policy: train-prm then needs `--base`. `problem_id` is a
hash of the question, so solutions of one question stay on one side of train-prm's
held-out split; `sample_idx` counts them in file order.

The whole file is read and checked before the run folder exists: a bad record is a
one-line error naming file, line and field, and leaves no folder behind, unless
`--skip-bad-rows` leaves such records out and counts them. The manifest's metrics say
where the data came from (file, sha256, format) and how many records were read,
skipped and left out (docs/design.md#import-data).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdrm_cli.configs.data import ImportDataConfig
from tdrm_cli.console import log
from tdrm_cli.errors import UsageError
from tdrm_cli.public_data import FORMATS
from tdrm_cli.public_data.records import BadRow, records
from tdrm_cli.runs import atomic_write_bytes, atomic_write_json, file_sha256, run_stage
from tdrm_cli.solutions import (
    ROLLOUT_COLUMNS,
    ROLLOUTS,
    parquet_bytes,
    records_table,
    row_problem,
)

SHOWN_SKIPS = 3
"""How many skipped records the log and the metrics quote."""
BATCH_ROWS = 8192
"""Rows turned into Arrow at a time, so the whole file is never held as Python objects."""


def problem_id(question: str) -> str:
    return "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


@dataclass
class Tally:
    """What the import counted: records of the file, and the solutions it kept."""

    rows_read: int = 0
    rows_skipped: int = 0
    rows_left_out: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    solutions: int = 0
    correct: int = 0
    steps: int = 0
    with_step_labels: int = 0
    with_step_truth: int = 0
    per_problem: Counter = field(default_factory=Counter)
    source_tasks: Counter = field(default_factory=Counter)

    def add(self, row: dict[str, Any], source_task: str | None) -> None:
        self.solutions += 1
        self.correct += row["correct"]
        self.steps += len(row["steps"])
        self.with_step_labels += row["step_labels"] is not None
        self.with_step_truth += row["step_truth"] is not None
        if source_task:
            self.source_tasks[source_task] += 1


def solutions(path: Path, fmt: str, skip_bad_rows: bool, tally: Tally) -> Iterator[dict]:
    """The file's solutions, each checked, in file order.

    A bad record raises a UsageError naming file, place and field; with `skip_bad_rows`
    it is counted instead (the first few quoted)."""
    reader = FORMATS[fmt].reader()
    assemble = getattr(reader, "assemble", None)

    def refuse(where: str, error: BadRow) -> None:
        line = f"{path} {where}: {error}"
        if not skip_bad_rows:
            raise UsageError(line + " (pass --skip-bad-rows to leave such records out)")
        tally.rows_skipped += 1
        if len(tally.skipped_examples) < SHOWN_SKIPS:
            tally.skipped_examples.append(line)

    def pieces() -> Iterator[tuple[str, dict]]:
        for where, record in records(path):
            tally.rows_read += 1
            try:
                if isinstance(record, BadRow):
                    raise record
                piece = reader.solution(record)
            except BadRow as e:
                refuse(where, e)
                continue
            if piece is None:
                tally.rows_left_out += 1
            else:
                yield where, piece

    for where, piece in assemble(list(pieces())) if assemble else pieces():
        problem = row_problem(graded_record(piece), {})
        if problem:
            refuse(where, BadRow(problem))
        else:
            yield piece


def graded_record(piece: dict[str, Any]) -> dict[str, Any]:
    """The fields `solutions.row_problem` checks, as the rollout row will hold them."""
    return {
        key: piece.get(key) for key in ("prompt", "steps", "correct", "step_labels", "step_truth")
    }


def rollout_row(piece: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """A rollout record: problem id from the question, sample_idx its solutions' file order."""
    pid = problem_id(piece["prompt"])
    row = {
        "problem_id": pid,
        "prompt": piece["prompt"],
        "gold": piece.get("gold"),
        "steps": piece["steps"],
        "answer": None,
        "correct": piece["correct"],
        "step_labels": piece.get("step_labels"),
        "step_truth": piece.get("step_truth"),
        "policy": None,
        "sample_idx": tally.per_problem[pid],
    }
    tally.per_problem[pid] += 1
    tally.add(row, piece.get("source_task"))
    return row


def read_table(path: Path, fmt: str, skip_bad_rows: bool):
    """(the Arrow table of rollouts, the tally) of the whole file; nothing is written."""
    import pyarrow as pa

    tally, tables, batch = Tally(), [], []
    for piece in solutions(path, fmt, skip_bad_rows, tally):
        batch.append(rollout_row(piece, tally))
        if len(batch) == BATCH_ROWS:
            tables.append(records_table(batch, ROLLOUT_COLUMNS))
            batch = []
    if batch:
        tables.append(records_table(batch, ROLLOUT_COLUMNS))
    if tally.rows_read == 0:
        raise UsageError(f"{path}: no records")
    if not tally.solutions:
        raise UsageError(
            f"{path}: no solutions to import ({tally.rows_read} records read, "
            f"{tally.rows_skipped} skipped, {tally.rows_left_out} without a verdict)"
        )
    return pa.concat_tables(tables), tally


def summarize(path: Path, fmt: str, tally: Tally) -> dict[str, Any]:
    n = tally.solutions
    return {
        "source": str(path.resolve()),
        "source_sha256": file_sha256(path),
        "format": fmt,
        "solutions": n,
        "problems": len(tally.per_problem),
        "rows_read": tally.rows_read,
        "rows_skipped": tally.rows_skipped,
        "rows_left_out": tally.rows_left_out,
        "pass@1": round(tally.correct / n, 4),
        "mean_steps": round(tally.steps / n, 4),
        "with_step_labels": tally.with_step_labels,
        "with_step_truth": tally.with_step_truth,
        "source_tasks": dict(tally.source_tasks) or None,
        "skipped_examples": tally.skipped_examples,
    }


def check_file(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise UsageError(f"{name}: no such file")
    if not path.is_file():
        raise UsageError(f"{name}: not a file")
    return path


def run(cfg: ImportDataConfig) -> Path:
    path = check_file(cfg.file)
    table, tally = read_table(path, cfg.format, cfg.skip_bad_rows)
    with run_stage("import-data", cfg) as run:
        run.add_input("file", path)
        atomic_write_bytes(run.path / ROLLOUTS, parquet_bytes(table))
        metrics = summarize(path, cfg.format, tally)
        atomic_write_json(run.path / "metrics.json", metrics)
        run.complete(metrics)
    if tally.rows_skipped:
        first = tally.skipped_examples[0]
        log(f"import-data: skipped {tally.rows_skipped} bad records (first: {first})")
    if tally.rows_left_out:
        log(f"import-data: left out {tally.rows_left_out} records without a verdict")
    log(
        f"import-data: {tally.solutions} solutions, {len(tally.per_problem)} problems, "
        f"{tally.rows_read} {cfg.format} records"
    )
    return run.path
