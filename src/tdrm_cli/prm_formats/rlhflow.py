"""RLHFlow PRMs (`RLHFlow/Llama3.1-8B-PRM-*`): Llama-3.1 Instruct trained as a chat where
every user turn is a step and the assistant answers `+` (right) or `-` (wrong).

The recipe of RLHFlow's `math-rm/prm_evaluate.py`: steps stripped; user turn 1 is
`question + " " + step 1`, user turn k is step k, each followed by an assistant turn `+`;
for step k the conversation up to its `+` goes through the chat template, and the step's
value is softmax over the logits of `+` and `-` (`tokenizer.encode(t)[-1]`) at position
-3, the one that predicts the assistant's token, P(+). Each prefix renders as a token
prefix of the next, so `one_pass` reads all steps from the last conversation.
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

DEFAULTS = {"good_token": "+", "bad_token": "-"}
CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
"""Llama-3 chat special tokens."""


class RLHFlowPRM(FormatPRM):
    format = "rlhflow"

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, str]):
        super().__init__(model, tokenizer, options)
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError("rlhflow: the PRM's tokenizer has no chat template")
        o = {**DEFAULTS, **options}
        self.good, self.bad = o["good_token"], o["bad_token"]
        self.candidates = [tokenizer.encode(self.good)[-1], tokenizer.encode(self.bad)[-1]]
        self.meta.update(o)

    def conversation(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        turns = []
        for k, step in enumerate(s.strip() for s in steps):
            turns.append({"role": "user", "content": question + " " + step if k == 0 else step})
            turns.append({"role": "assistant", "content": self.good})
        return turns

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        prefixes = []
        for k in range(1, len(steps) + 1):
            text = self.tokenizer.apply_chat_template(
                self.conversation(question, steps[:k]), tokenize=False
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < 3:
                raise UsageError("rlhflow: the chat template renders a step in under 3 tokens")
            prefixes.append(Sequence_(ids, [len(ids) - 3]))
        return one_pass(prefixes)

    def values(self, input_ids: Any, attention_mask: Any, rows: Any, positions: Any):
        logits = next_token_logits(
            self.model, input_ids, attention_mask, rows, positions, self.candidates
        )
        return logits.float().softmax(dim=-1)[:, 0]


def detect(folder: Folder) -> bool:
    """A Llama-3 chat causal LM whose model card says it is an RLHFlow PRM (any Llama-3
    Instruct has the chat tokens, so they alone are no signal)."""
    card = folder.readme.lower()
    chat = all(t in folder.special_tokens for t in CHAT_TOKENS)
    return folder.causal_lm and chat and "rlhflow" in card and "prm" in card


def load(folder: Folder, options: dict[str, str], dtype: Any, device: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(folder, trust_remote_code)
    model = load_model(folder, AutoModelForCausalLM, dtype, device, trust_remote_code)
    return RLHFlowPRM(model, tokenizer, options)


FORMAT = Format(
    "rlhflow",
    "RLHFlow: a Llama-3.1 chat, a user turn per step, P('+') for the assistant's answer",
    detect,
    load,
    {
        "good_token": "the assistant's answer that means right (default +)",
        "bad_token": "the answer that means wrong (default -)",
    },
)
