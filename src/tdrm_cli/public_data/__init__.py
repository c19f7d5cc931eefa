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
    """Module name under `tdrm_cli.public_data`."""
    help: str
    """What the format is, in a few words."""

    def reader(self) -> Any:
        return importlib.import_module(f"{__name__}.{self.module}")


# --format name -> reader; the order is the help's
FORMATS: dict[str, Format] = {
    "math-shepherd": Format("math_shepherd", "peiyi9979/Math-Shepherd input/label with ки tags"),
    "prm800k": Format("prm800k", "openai/prm800k phase JSONL (human step ratings)"),
    "trl": Format("trl", "TRL stepwise prompt/completions/labels (trl-lib/math_shepherd, prm800k)"),
    "processbench": Format("processbench", "Qwen/ProcessBench problem/steps/label (first error)"),
    "tdrm-paper": Format(
        "tdrm_paper", "THUDM/TDRM transitions conversations{question, state1, ...}"
    ),
}
