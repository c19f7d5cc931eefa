"""One module per stage, each with a public `run(cfg) -> Path`, and `STAGES`, their registry.

The registry names each stage's config class and module without importing the module, so
the CLI and `tdrm pipeline` can list and configure stages without loading torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from tdrm_cli.configs import data, sample, train


class Stage(NamedTuple):
    config: type
    module: str
    """Module name under `tdrm_cli.stages`."""
    help: str
    """One line for `tdrm --help`."""

    def run(self, cfg: Any) -> Path:
        """Import the stage module (torch and all) and run it; returns the run folder."""
        return importlib.import_module(f"{__name__}.{self.module}").run(cfg)


# command name -> stage; the order is `tdrm --help`'s
STAGES: dict[str, Stage] = {
    "sft": Stage(train.SFTConfig, "sft", "Train the tiny from-scratch policy on a built-in task."),
    "collect": Stage(
        sample.CollectConfig,
        "collect",
        "Sample policy rollouts with verdicts, MC step labels and step truth.",
    ),
    "import-data": Stage(
        data.ImportDataConfig,
        "import_data",
        "Import public step-labelled data (Math-Shepherd, PRM800K, ...) as a collect-shaped run.",
    ),
    "train-prm": Stage(
        train.TrainPRMConfig,
        "train_prm",
        "Train a PRM on collected rollouts with TD, n-step, MC, exact-truth or outcome targets.",
    ),
    "bon": Stage(
        sample.BonConfig,
        "bon",
        "Best-of-N: accuracy vs N for every PRM x aggregation x vote, with majority and pass@N.",
    ),
    "search": Stage(
        sample.SearchConfig,
        "search",
        "Step-level PRM-guided search (beam, greedy, DVTS): accuracy vs generated tokens.",
    ),
    "rl": Stage(
        train.RLConfig, "rl", "GRPO on the policy with verifier, PRM or PRM+verifier rewards."
    ),
    "eval": Stage(
        sample.EvalConfig,
        "eval",
        "Policy and PRM metrics plus report.md of bon / search / rl runs.",
    ),
}
