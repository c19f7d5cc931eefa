"""Qwen2.5-Math-PRM-7B / -72B and Qwen2.5-Math-7B-PRM800K: a Qwen2 backbone and a head
`score` = Linear(H, H), ReLU, Linear(H, 2); a step's value is softmax(...)[1] at the
`<extra_0>` token that follows it.

The recipe is the model card's usage code (Qwen/Qwen2.5-Math-PRM-7B README.md,
`make_step_rewards`) and its `modeling_qwen2_rm.py` (`Qwen2ForProcessRewardModel`): the
chat template over a system prompt ("Please reason step by step, and put your final
answer within \\boxed{}."), the question, and the steps joined by `<extra_0>` with one
after the last; `tokenizer.encode` of that text. Rebuilt here from the safetensors (a
transformers Qwen2 backbone, the head by hand), since the remote code fails on current
transformers. One forward pass scores every step.
"""

from __future__ import annotations

from collections.abc import Sequence

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats.base import (
    Folder,
    Format,
    FormatPRM,
    Sequence_,
    check_options,
    load_tokenizer,
)

ARCHITECTURE = "Qwen2ForProcessRewardModel"
HEAD = ["score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"]
STEP_TOKEN = "<extra_0>"
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class QwenPRM(FormatPRM):
    format = "qwen-prm"

    def __init__(self, model, tokenizer, options: dict[str, str], system: str):
        super().__init__(model, tokenizer, options)
        self.system = system
        self.step_id: int = tokenizer.convert_tokens_to_ids(STEP_TOKEN)
        self.meta["system"] = system

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": STEP_TOKEN.join(steps) + STEP_TOKEN},
        ]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False
        )
        ids = list(self.tokenizer.encode(text))
        positions = [i for i, token in enumerate(ids) if token == self.step_id]
        if len(positions) != len(steps):
            raise UsageError(
                f"a question or step holds the PRM's step token {STEP_TOKEN!r} itself "
                f"({len(positions)} in the input for {len(steps)} steps)"
            )
        return [Sequence_(ids, positions)]

    def read(self, output, rows, positions):
        return output[rows, positions].float().softmax(-1)[:, 1]


def detect(folder: Folder) -> bool:
    return ARCHITECTURE in folder.architectures or set(HEAD) <= folder.weight_names


def check_tokenizer(tokenizer, where: str) -> None:
    if not tokenizer.chat_template:
        raise UsageError(f"{where}: its tokenizer has no chat template (Qwen's PRM input is one)")
    step_id = tokenizer.convert_tokens_to_ids(STEP_TOKEN)
    if step_id is None or tokenizer.encode(STEP_TOKEN, add_special_tokens=False) != [step_id]:
        raise UsageError(f"{where}: its tokenizer has no {STEP_TOKEN} token")


def load(folder: Folder, options: dict[str, str], dtype=None, device: str = "cpu",
         trust_remote_code: bool = False) -> QwenPRM:  # fmt: skip
    from torch import nn

    from tdrm_cli.prm_formats import native

    where = native.where_of(folder)
    options = check_options(FORMAT, options, where)
    system = native.option_text(options, "system", SYSTEM, folder)
    native.need_safetensors(folder, "qwen-prm")
    native.need_weights(folder, HEAD, "Qwen2.5-Math-PRM")
    tokenizer = load_tokenizer(folder, trust_remote_code)
    check_tokenizer(tokenizer, where)

    def score_head(config):  # Qwen2ForProcessRewardModel's `score`: Linear, ReLU, Linear(H, 2)
        hidden = config.hidden_size
        return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    model = native.backbone_with_head(
        folder, score_head, "score.", dtype, device, trust_remote_code
    )
    return QwenPRM(model, tokenizer, options, system)


FORMAT = Format(
    name="qwen-prm",
    help="Qwen2.5-Math-PRM: Qwen2 + score head (Linear, ReLU, Linear to 2), "
    "softmax[1] at each <extra_0> (one pass)",
    detect=detect,
    load=load,
    options={"system": "system prompt of the chat (default Qwen's step-by-step prompt)"},
)
