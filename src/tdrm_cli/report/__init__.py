"""What `tdrm` reports: terminal tables (`terminal`), eval's report.md (`writer`, built from
`sections` and `directions` with the `markdown` helpers), and the demo's numbers for the
README and over seeds (`demo`). The names the CLI, the stages, the Makefile and the tests
use are importable from `tdrm_cli.report` itself."""

from tdrm_cli.report.demo import README_BEGIN, README_END, seed_numbers, seeds_table, update_readme
from tdrm_cli.report.sections import coupling_section, degenerate_notes
from tdrm_cli.report.terminal import env_table, key_metric, runs_table
from tdrm_cli.report.writer import write_report

__all__ = [
    "README_BEGIN",
    "README_END",
    "coupling_section",
    "degenerate_notes",
    "env_table",
    "key_metric",
    "runs_table",
    "seed_numbers",
    "seeds_table",
    "update_readme",
    "write_report",
]
