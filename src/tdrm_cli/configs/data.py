"""Config of the stage that brings public data in: `tdrm import-data`."""

from __future__ import annotations

from dataclasses import dataclass

from tdrm_cli.config import RunConfig, _check, _one_of, listed, opt
from tdrm_cli.public_data import FORMATS  # the registry; no pyarrow


@dataclass
class ImportDataConfig(RunConfig):
    """`tdrm import-data FILE --format F`: a step-labelled data file as a collect-shaped run."""

    file: str | None = opt(
        None,
        "Data file: .jsonl, a .json list, or .parquet.",
        argument=True,
        required=True,
    )
    format: str | None = opt(
        None,
        f"Layout of FILE: {listed(FORMATS)} (README: Public datasets).",
        required=True,
    )
    skip_bad_rows: bool = opt(
        False, "Leave out records that cannot be imported (counted in the run's metrics)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.file is not None, "FILE is required")
        _check(self.format is not None, f"--format is required: {listed(FORMATS)}")
        _one_of(self.format, FORMATS, "--format")
