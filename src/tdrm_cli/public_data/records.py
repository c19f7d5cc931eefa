"""Reading a public data file record by record, and the checks every format's reader uses.

A file is JSONL (one JSON object per line), a JSON list of objects (a `.json` file whose
first character is `[`, as ProcessBench ships), or Parquet (`.parquet`, as the Hub
converts datasets). Each record comes with where it is ("line 12", "row 3"), so an error
names file, place and field. A record a reader cannot use raises `BadRow`; a file that
cannot be read at all is a `UsageError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tdrm_cli.errors import JSON_ERRORS, UsageError, json_reason

PARQUET_BATCH = 1024


class BadRow(Exception):
    """One record that cannot be imported; the message starts with the field when one is at fault."""


def bad(field: str, why: str) -> BadRow:
    return BadRow(f"field '{field}' {why}")


def records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of the file; a bad JSON line is a BadRow record."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
    elif suffix == ".json" and _first_char(path) == "[":
        yield from _json_list(path)
    else:
        yield from _jsonl(path)


def _first_char(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head[:1].decode("ascii", errors="replace")


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, BadRow("not valid UTF-8")
            except JSON_ERRORS as e:
                yield where, BadRow(f"not valid JSON{json_reason(e)}")


def _json_list(path: Path) -> Iterator[tuple[str, Any]]:
    """The items of a JSON list, each with the line it starts on."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid UTF-8") from None
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    line = 1 + text.count("\n", 0, i)
    while True:
        j = _skip_space(text, i)
        line += text.count("\n", i, j)
        if j < len(text) and text[j] == "]" and not text[j + 1 :].strip():
            return
        try:
            item, end = decoder.raw_decode(text, j)
        except JSON_ERRORS as e:
            raise UsageError(f"{path} line {line}: not valid JSON{json_reason(e)}") from None
        yield f"line {line}", item
        line += text.count("\n", j, end)
        k = _skip_space(text, end)
        line += text.count("\n", end, k)
        if k < len(text) and text[k] == ",":
            i = k + 1
        elif k < len(text) and text[k] == "]" and not text[k + 1 :].strip():
            return
        else:
            raise UsageError(f"{path} line {line}: not valid JSON (expected ',' or ']')")


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield f"row {row}", record
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{path}: unreadable parquet ({type(e).__name__})") from None


# ---------------------------------------------------------------- field checks


def get(record: Any, key: str, name: str | None = None) -> Any:
    """`record[key]`; a missing key (or a record that is no object) is a BadRow."""
    if not isinstance(record, dict):
        parent = name.rsplit(".", 1)[0] if name and "." in name else None
        raise BadRow(f"field '{parent}' is not an object" if parent else "expected a JSON object")
    if key not in record:
        raise BadRow(f"missing field '{name or key}'")
    return record[key]


def text(value: Any, name: str, blank: bool = False) -> str:
    """A string (non-blank unless `blank`) that can be written as UTF-8."""
    if not isinstance(value, str):
        raise bad(name, f"is {kind(value)}, expected text")
    if not blank and not value.strip():
        raise bad(name, "is blank")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(name, "is not valid Unicode (a lone surrogate)") from None
    return value


def text_list(value: Any, name: str) -> list[str]:
    """A non-empty list of non-blank strings (the steps of a solution)."""
    if not isinstance(value, list):
        raise bad(name, f"is {kind(value)}, expected a list of steps")
    if not value:
        raise bad(name, "is empty")
    return [text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def flag(value: Any, name: str) -> int:
    """A verdict or hard label: true/false or 0/1, as 0/1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1) and not math.isnan(value):
        return int(value)
    raise bad(name, f"is {kind(value)}, expected true/false or 0/1")


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"is {kind(value)}, expected an integer")
    return value


def kind(value: Any) -> str:
    """A value for an error line: short ones shown, others by type."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 20 else "a long string"
    return f"a {'list' if isinstance(value, list) else type(value).__name__}"
