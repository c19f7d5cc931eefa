"""PRMs trained by TRL's `PRMTrainer`: a `*ForTokenClassification` model with two labels.

TRL's `PRMTrainer.tokenize_row` (trl/experimental/prm/prm_trainer.py) builds one sequence
per example: `[bos] + prompt`, then every step with the step separator appended, each
tokenized on its own without special tokens, and the label (0 wrong, 1 right) on the last
token of every `step + separator`. A step's value is the softmax probability of label 1
there. The pieces are tokenized apart, so one pass gives every prefix's values exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdrm_cli.prm_formats.base import (
    Folder,
    Format,
    FormatPRM,
    Sequence_,
    load_model,
    load_tokenizer,
)
from tdrm_cli.prm_formats.tdrm import PRM_META

DEFAULT_STEP_SEPARATOR = "\n"  # PRMConfig.step_separator's default


class TRLPRM(FormatPRM):
    format = "trl"

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, str]):
        super().__init__(model, tokenizer, options)
        self.step_separator = options.get("step_separator", DEFAULT_STEP_SEPARATOR)
        self.separator_ids = tokenizer.encode(self.step_separator, add_special_tokens=False)
        self.meta["step_separator"] = self.step_separator

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        ids = self._ids(question)
        if self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        positions = []
        for step in steps:
            ids = ids + self._ids(step) + self.separator_ids
            positions.append(len(ids) - 1)
        return [Sequence_(ids, positions)]

    def read(self, output: Any, rows: Any, positions: Any):
        return output.logits[rows, positions].float().softmax(dim=-1)[:, 1]


def detect(folder: Folder) -> bool:
    token_classifier = any(a.endswith("ForTokenClassification") for a in folder.architectures)
    return token_classifier and folder.labels == 2 and PRM_META not in folder.files


def load(folder: Folder, options: dict[str, str], dtype: Any, device: str, trust_remote_code: bool):
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(folder, trust_remote_code)
    model = load_model(folder, AutoModelForTokenClassification, dtype, device, trust_remote_code)
    return TRLPRM(model, tokenizer, options)


FORMAT = Format(
    "trl",
    "TRL PRMTrainer: a two-label *ForTokenClassification model, label 1 at each step's end",
    detect,
    load,
    {"step_separator": "what joined the steps in training (PRMConfig.step_separator, '\\n')"},
)
