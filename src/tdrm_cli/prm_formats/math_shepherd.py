"""Math-Shepherd PRMs (and PRMs trained the same way by OpenRLHF): a causal LM that reads a
step tag after every step and predicts `+` (right) or `-` (wrong) there.

The model card of `peiyi9979/math-shepherd-mistral-7b-prm` (`recipe=card`, the default):
the input is `question + " " + output`, the output's steps each end in `" ки"` and are
joined by `"\n"`, the whole text tokenized with the tokenizer's special tokens
(`tokenizer.encode`); the tag is `tokenizer.encode("ки")[-1]`, the two candidates
`tokenizer.encode("+ -")[1:]`; a step's value is softmax over their logits at the tag,
P(+). OpenRLHF (`recipe=openrlhf`: `ProcessRewardDataset`, `PRMLoss`) tokenizes the same
text without special tokens and looks the tag and each reward token up alone, one token
each (`convert_token_to_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats.base import (
    Folder,
    Format,
    FormatPRM,
    Sequence_,
    load_model,
    load_tokenizer,
    next_token_logits,
    one_pass,
)

DEFAULTS = {"step_tag": "ки", "good_token": "+", "bad_token": "-", "recipe": "card"}
RECIPES = ("card", "openrlhf")


def single_token(tokenizer: Any, key: str, text: str) -> int:
    """The one token `text` is on its own (OpenRLHF's `convert_token_to_id`)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise UsageError(
            f"--prm-option {key}={text}: is {len(ids)} tokens for this tokenizer; "
            "expected exactly one"
        )
    return ids[0]


def card_candidates(tokenizer: Any, good: str, bad: str) -> list[int]:
    """The card's `tokenizer.encode(f"{good} {bad}")[1:]`: its `[1:]` drops the BOS."""
    ids = tokenizer.encode(f"{good} {bad}")
    if ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    if len(ids) != 2:
        raise UsageError(
            f"--prm-option good_token={good} bad_token={bad}: '{good} {bad}' is {len(ids)} "
            "tokens for this tokenizer; expected two (or use recipe=openrlhf)"
        )
    return ids


class MathShepherdPRM(FormatPRM):
    format = "math-shepherd"

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, str]):
        super().__init__(model, tokenizer, options)
        o = {**DEFAULTS, **options}
        if o["recipe"] not in RECIPES:
            raise UsageError(f"--prm-option recipe={o['recipe']}: expected {' or '.join(RECIPES)}")
        self.step_tag, card = o["step_tag"], o["recipe"] == "card"
        if not self.step_tag:
            raise UsageError("--prm-option step_tag: must not be empty")
        self.special_tokens = card
        if card:
            self.tag_id = tokenizer.encode(self.step_tag)[-1]
            self.candidates = card_candidates(tokenizer, o["good_token"], o["bad_token"])
        else:
            self.tag_id = single_token(tokenizer, "step_tag", self.step_tag)
            self.candidates = [
                single_token(tokenizer, "good_token", o["good_token"]),
                single_token(tokenizer, "bad_token", o["bad_token"]),
            ]
        self.meta.update(o)

    def text(self, question: str, steps: Sequence[str]) -> str:
        return question + " " + "\n".join(f"{step} {self.step_tag}" for step in steps)

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        prefixes = []
        for k in range(1, len(steps) + 1):
            ids = self.tokenizer.encode(
                self.text(question, steps[:k]), add_special_tokens=self.special_tokens
            )
            tags = [i for i, t in enumerate(ids) if t == self.tag_id]
            if not tags:
                raise UsageError(
                    f"math-shepherd: step {k} ends in no {self.step_tag!r} token of its own "
                    "(the tokenizer merged the tag into its neighbours)"
                )
            prefixes.append(Sequence_(ids, [tags[-1]]))
        return one_pass(prefixes)

    def values(self, input_ids: Any, attention_mask: Any, rows: Any, positions: Any):
        logits = next_token_logits(
            self.model, input_ids, attention_mask, rows, positions, self.candidates
        )
        return logits.float().softmax(dim=-1)[:, 0]


def detect(folder: Folder) -> bool:
    """Only a clear signal: a causal LM whose tokenizer adds the tag as a token of its own,
    or whose model card names it. Every Llama or Mistral vocabulary holds `ки`, `+` and
    `-`, so the vocabulary alone would claim plain causal LMs."""
    tag = DEFAULTS["step_tag"]
    return folder.causal_lm and (tag in folder.special_tokens or tag in folder.readme)


def load(folder: Folder, options: dict[str, str], dtype: Any, device: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(folder, trust_remote_code)
    model = load_model(folder, AutoModelForCausalLM, dtype, device, trust_remote_code)
    return MathShepherdPRM(model, tokenizer, options)


FORMAT = Format(
    "math-shepherd",
    "Math-Shepherd / OpenRLHF: a causal LM predicting '+' or '-' at a step tag after each step",
    detect,
    load,
    {
        "step_tag": "the tag ending every step (' ки' after it; default ки)",
        "good_token": "the token that means right (default +)",
        "bad_token": "the token that means wrong (default -)",
        "recipe": "card (the model card's tokenization, BOS included) or openrlhf "
        "(no special tokens, each token looked up alone)",
    },
)
