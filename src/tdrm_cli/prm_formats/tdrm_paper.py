"""The TDRM paper's PRMs (THUDM/TDRM, e.g. zd21/DeepSeek-TD0-PRM): a one-label sequence
classifier scoring one prefix of the solution per forward pass; a step's value is the
sigmoid of the logit at the last token of the prefix that ends with it.

The recipe is THUDM/TDRM at d411244: `tdrm/tdrm_1_step_train.py` (training: the chat
template over [user: question, assistant: steps so far], `add_generation_prompt=False`,
then `tokenizer(text)`; `AutoModelForSequenceClassification`, `num_labels=1`) and
`prm_evaluation/src/rewarding/get_reward_math_prm_filter.py` (scoring: the same text,
`torch.sigmoid(logits)`). The steps so far are joined by `separator`, the text the policy
wrote between them. The model is transformers' own sequence-classification class; its
`score` head is applied at the prefix's last token, which is the token the class pools.
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


class TDRMPaperPRM(FormatPRM):
    format = "tdrm-paper"

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        seqs = []
        for k in range(1, len(steps) + 1):
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": self.separator.join(steps[:k])},
            ]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=False
            )
            ids = list(self.tokenizer(text)["input_ids"])
            seqs.append(Sequence_(ids, [len(ids) - 1]))
        return seqs

    def read(self, output, rows, positions):
        return output[rows, positions, 0].float().sigmoid()


def one_label(config: dict) -> bool:
    labels = config.get("id2label")
    return config.get("num_labels") == 1 or (isinstance(labels, dict) and len(labels) == 1)


def detect(folder: Folder) -> bool:
    classifier = any(a.endswith("ForSequenceClassification") for a in folder.architectures)
    return classifier and one_label(folder.config)


def load(folder: Folder, options: dict[str, str], dtype=None, device: str = "cpu",
         trust_remote_code: bool = False) -> TDRMPaperPRM:  # fmt: skip
    from transformers import AutoModelForSequenceClassification

    from tdrm_cli.prm_formats import native

    where = native.where_of(folder)
    options = check_options(FORMAT, options, where)
    native.need_safetensors(folder, "tdrm-paper")
    if not detect(folder):
        raise UsageError(f"{where}: config.json is not a one-label sequence classifier")
    tokenizer = load_tokenizer(folder, trust_remote_code)
    if not tokenizer.chat_template:
        raise UsageError(f"{where}: its tokenizer has no chat template (TDRM's input is one)")
    dtype = native.torch_dtype(dtype, device)
    config = native.load_config(folder, trust_remote_code)
    config.num_labels = 1
    classifier = native.load_model(
        AutoModelForSequenceClassification, folder, config, dtype,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    head = getattr(classifier, "score", None)
    if head is None:
        raise UsageError(f"{where}: {type(classifier).__name__} has no 'score' head")
    model = native.finish(native.TokenHead(classifier.base_model, head), folder, device)
    return TDRMPaperPRM(model, tokenizer, options)


FORMAT = Format(
    name="tdrm-paper",
    help="the TDRM paper's PRMs: a one-label sequence classifier, sigmoid of its logit, "
    "one forward pass per prefix",
    detect=detect,
    load=load,
)
