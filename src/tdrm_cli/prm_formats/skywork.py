"""Skywork-o1-Open-PRM (Qwen2.5-1.5B / 7B): a Qwen2 causal LM whose last hidden state feeds
a value head `v_head.summary` = Linear(H, 1); a step's value is the sigmoid at the token
that follows it.

The recipe is SkyworkAI/skywork-o1-prm-inference at 719b56b (`model_utils/io_utils.py`
`prepare_input` / `derive_step_rewards`, `model_utils/prm_model.py` `PRM_MODEL` and
`ValueHead`): the input is `encode(bos_token + problem + "\\n")`, then for each step
`encode(step)` and the last id of `encode(step_token)` (`"\\n"`), read there. Rebuilt here
from the safetensors (a transformers Qwen2 backbone, the head by hand); no remote code.
One forward pass scores every step.
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

ARCHITECTURE = "Qwen2ForPrmModel"
HEAD = ["v_head.summary.weight", "v_head.summary.bias"]
STEP_TOKEN = "\n"


class SkyworkPRM(FormatPRM):
    format = "skywork"

    def __init__(self, model, tokenizer, options: dict[str, str], bos: str, step_token: str):
        super().__init__(model, tokenizer, options)
        self.bos = bos
        self.step_id: int = tokenizer.encode(step_token)[-1]
        self.meta["step_token"] = step_token

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        encode = self.tokenizer.encode
        ids = list(encode(self.bos + question + "\n"))
        positions = []
        for step in steps:
            ids += (encode(step) if step else []) + [self.step_id]
            positions.append(len(ids) - 1)
        return [Sequence_(ids, positions)]

    def read(self, output, rows, positions):
        return output[rows, positions, 0].float().sigmoid()


def detect(folder: Folder) -> bool:
    if ARCHITECTURE in folder.architectures:
        return True
    backbone = any(name.startswith("model.layers.") for name in folder.weight_names)
    return backbone and set(HEAD) <= folder.weight_names


def load(folder: Folder, options: dict[str, str], dtype=None, device: str = "cpu",
         trust_remote_code: bool = False) -> SkyworkPRM:  # fmt: skip
    from torch import nn

    from tdrm_cli.prm_formats import native

    where = native.where_of(folder)
    options = check_options(FORMAT, options, where)
    step_token = native.option_text(options, "step_token", STEP_TOKEN, folder)
    native.need_safetensors(folder, "skywork")
    native.need_weights(folder, HEAD, "Skywork PRM")
    tokenizer = load_tokenizer(folder, trust_remote_code)
    bos = options.get("bos", tokenizer.bos_token)
    if not bos:
        raise UsageError(
            f"{where}: its tokenizer has no bos_token, which Skywork's input starts with "
            f"(--prm-option bos=TOKEN)"
        )
    model = native.backbone_with_head(
        folder, lambda config: nn.Linear(config.hidden_size, 1), "v_head.summary.", dtype,
        device, trust_remote_code,
    )  # fmt: skip
    return SkyworkPRM(model, tokenizer, options, bos, step_token)


FORMAT = Format(
    name="skywork",
    help="Skywork-o1-Open-PRM: Qwen2 + value head v_head.summary, sigmoid at the token "
    "after each step (one pass)",
    detect=detect,
    load=load,
    options={
        "step_token": "text whose last token follows each step and is read (default a newline)",
        "bos": "text the input starts with (default the tokenizer's bos_token)",
    },
)
