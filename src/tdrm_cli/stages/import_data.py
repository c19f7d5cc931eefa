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
from pathlib import Path
from typing import Any

from tdrm_cli.configs.data import ImportDataConfig
from tdrm_cli.console import log
from tdrm_cli.errors import UsageError
from tdrm_cli.public_data import FORMATS
from tdrm_cli.public_data.records import BadRow, records
from tdrm_cli.runs import atomic_write_bytes, atomic_write_json, run_stage
from tdrm_cli.solutions import (
    ROLLOUT_COLUMNS,
    ROLLOUTS,
    parquet_bytes,
    records_table,
    row_problem,
)

SHOWN_SKIPS = 3
"""How many skipped records the log and the metrics quote."""


def problem_id(question: str) -> str:
    return "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def read_solutions(path: Path, fmt: str, skip_bad_rows: bool) -> tuple[list[dict], dict]:
    """(solutions with where they came from, counts) of the whole file.

    A bad record raises a UsageError naming file, place and field; with `skip_bad_rows`
    it is counted instead (the first few quoted)."""
    reader = FORMATS[fmt].reader()
    assemble = getattr(reader, "assemble", None)
    counts: dict[str, Any] = {"rows_read": 0, "rows_skipped": 0, "rows_left_out": 0}
    skipped: list[str] = []
    pieces: list[tuple[str, dict]] = []

    def refuse(where: str, error: BadRow) -> None:
        line = f"{path} {where}: {error}"
        if not skip_bad_rows:
            raise UsageError(line + " (pass --skip-bad-rows to leave such records out)")
        counts["rows_skipped"] += 1
        if len(skipped) < SHOWN_SKIPS:
            skipped.append(line)

    for where, record in records(path):
        counts["rows_read"] += 1
        try:
            if isinstance(record, BadRow):
                raise record
            piece = reader.solution(record)
        except BadRow as e:
            refuse(where, e)
            continue
        if piece is None:
            counts["rows_left_out"] += 1
        else:
            pieces.append((where, piece))
    solutions = []
    for where, piece in assemble(pieces) if assemble else pieces:
        problem = row_problem(graded_record(piece), {})
        if problem:
            refuse(where, BadRow(problem))
        else:
            solutions.append(piece)
    counts["skipped_examples"] = skipped
    if counts["rows_read"] == 0:
        raise UsageError(f"{path}: no records")
    if not solutions:
        raise UsageError(
            f"{path}: no solutions to import ({counts['rows_read']} records read, "
            f"{counts['rows_skipped']} skipped, {counts['rows_left_out']} without a verdict)"
        )
    return solutions, counts


def graded_record(piece: dict[str, Any]) -> dict[str, Any]:
    """The fields `solutions.row_problem` checks, as the rollout row will hold them."""
    return {
        key: piece.get(key) for key in ("prompt", "steps", "correct", "step_labels", "step_truth")
    }


def rollout_rows(solutions: list[dict]) -> list[dict]:
    """Rollout records in file order: problem ids from the question, sample_idx per problem."""
    seen: Counter[str] = Counter()
    rows = []
    for piece in solutions:
        pid = problem_id(piece["prompt"])
        rows.append(
            {
                "problem_id": pid,
                "prompt": piece["prompt"],
                "gold": piece.get("gold"),
                "steps": piece["steps"],
                "answer": None,
                "correct": piece["correct"],
                "step_labels": piece.get("step_labels"),
                "step_truth": piece.get("step_truth"),
                "policy": None,
                "sample_idx": seen[pid],
            }
        )
        seen[pid] += 1
    return rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summarize(
    path: Path, fmt: str, rows: list[dict], solutions: list[dict], counts: dict
) -> dict[str, Any]:
    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    tasks = Counter(p["source_task"] for p in solutions if p.get("source_task"))
    return {
        "source": str(path.resolve()),
        "source_sha256": file_sha256(path),
        "format": fmt,
        "solutions": len(rows),
        "problems": len({r["problem_id"] for r in rows}),
        **{k: v for k, v in counts.items() if k != "skipped_examples"},
        "pass@1": mean([r["correct"] for r in rows]),
        "mean_steps": mean([len(r["steps"]) for r in rows]),
        "with_step_labels": sum(r["step_labels"] is not None for r in rows),
        "with_step_truth": sum(r["step_truth"] is not None for r in rows),
        "source_tasks": dict(tasks) or None,
        "skipped_examples": counts["skipped_examples"],
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
    solutions, counts = read_solutions(path, cfg.format, cfg.skip_bad_rows)
    rows = rollout_rows(solutions)
    table = records_table(rows, ROLLOUT_COLUMNS)
    with run_stage("import-data", cfg) as run:
        run.add_input("file", path)
        atomic_write_bytes(run.path / ROLLOUTS, parquet_bytes(table))
        metrics = summarize(path, cfg.format, rows, solutions, counts)
        atomic_write_json(run.path / "metrics.json", metrics)
        run.complete(metrics)
    if counts["rows_skipped"]:
        first = counts["skipped_examples"][0]
        log(f"import-data: skipped {counts['rows_skipped']} bad records (first: {first})")
    if counts["rows_left_out"]:
        log(f"import-data: left out {counts['rows_left_out']} records without a verdict")
    log(
        f"import-data: {metrics['solutions']} solutions, {metrics['problems']} problems, "
        f"{counts['rows_read']} {cfg.format} records"
    )
    return run.path
