"""Public step-labelled data sets, read into graded-solution records (`tdrm import-data`).

`FORMATS` is the registry: one small module per layout, each with `solution(record)`,
which turns one record of the file into a partial record (`prompt`, `steps`, `correct`,
and where the data has them `step_labels`, `step_truth`, `gold`), returns None for a
well-formed record without a verdict, or raises `records.BadRow` naming the field. A
format whose records are pieces of solutions (the TDRM paper's transitions) also has
`assemble`, which puts the checked pieces back together. Light to import: the CLI reads
the names for `--format`'s help.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Format(NamedTuple):
    module: str
    """Module name under `tdrm_cli.public_data` (its docstring says which layout it reads)."""

    def reader(self) -> Any:
        return importlib.import_module(f"{__name__}.{self.module}")


# --format name -> reader; the order is the help's
FORMATS: dict[str, Format] = {
    "math-shepherd": Format("math_shepherd"),
    "prm800k": Format("prm800k"),
    "trl": Format("trl"),
    "processbench": Format("processbench"),
    "tdrm-paper": Format("tdrm_paper"),
}
