"""What the natively rebuilt formats (skywork, qwen-prm, tdrm-paper) share: a transformers
backbone loaded from the folder's safetensors, and a head applied to every token's last
hidden state (`TokenHead`), so `FormatPRM.read` picks the positions it needs.

Imported only when such a format loads (it imports torch); detection never needs it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats.base import Folder


class TokenHead(nn.Module):
    """`head(backbone(ids).last_hidden_state)`: one head output per token, `[B, T, K]`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = backbone.config

    def forward(self, input_ids, attention_mask=None):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(hidden.last_hidden_state)


def where_of(folder: Folder) -> str:
    return f"--prm {folder.path}"


def torch_dtype(dtype: Any, device: str):
    """`dtype` as given, else bfloat16 on a GPU and float32 on the CPU (as `load_prm`)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        return getattr(torch, dtype)
    return dtype


def need_safetensors(folder: Folder, what: str) -> None:
    """Refuse a folder whose weights are not safetensors (pickle can run code)."""
    if any(name.endswith(".safetensors") for name in folder.files):
        return
    pickles = sorted(n for n in folder.files if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    found = f"only {pickles[0]}" if pickles else "no weights"
    raise UsageError(
        f"{where_of(folder)}: {found}; the {what} format loads safetensors only "
        f"(convert it once: README, 'Public PRMs')"
    )


def need_weights(folder: Folder, names: list[str], what: str) -> None:
    missing = [name for name in names if name not in folder.weight_names]
    if missing:
        raise UsageError(
            f"{where_of(folder)}: no '{missing[0]}' in its safetensors (a {what} checkpoint "
            f"has {', '.join(names)})"
        )


def load_config(folder: Folder, trust_remote_code: bool = False):
    """The folder's config as transformers' own class for its `model_type` (the folder's
    `auto_map` code is not run)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from tdrm_cli.generation import model_load_errors

    model_type = folder.config.get("model_type")
    with model_load_errors(where_of(folder)):
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
            return CONFIG_MAPPING[model_type].from_pretrained(str(folder.path))
        if not trust_remote_code:
            raise UsageError(
                f"{where_of(folder)}: transformers has no model type {model_type!r} "
                f"(--trust-remote-code runs the folder's own code)"
            )
        return AutoConfig.from_pretrained(str(folder.path), trust_remote_code=True)


def load_model(model_class: Any, folder: Folder, config: Any, dtype: Any, **kwargs: Any):
    """`model_class.from_pretrained` on the folder's safetensors; a weight the checkpoint
    lacks is refused (it would start at random)."""
    from tdrm_cli.generation import model_load_errors

    with model_load_errors(where_of(folder)):
        model, info = model_class.from_pretrained(
            str(folder.path), config=config, dtype=dtype, use_safetensors=True,
            output_loading_info=True, **kwargs,
        )  # fmt: skip
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UsageError(
            f"{where_of(folder)}: weight '{missing[0]}' is not in the checkpoint "
            f"({len(missing)} missing)"
        )
    return model


def read_tensors(folder: Folder, prefix: str) -> dict[str, Any]:
    """The tensors under `prefix` in the folder's safetensors files, the prefix cut off."""
    from safetensors import safe_open

    from tdrm_cli.generation import model_load_errors

    found: dict[str, Any] = {}
    with model_load_errors(where_of(folder)):
        for file in sorted(folder.path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name.startswith(prefix):
                        found[name[len(prefix) :]] = f.get_tensor(name)
    return found


def load_head(head: nn.Module, folder: Folder, prefix: str, dtype: Any) -> nn.Module:
    """`head` with the folder's tensors under `prefix` (names and shapes must match)."""
    state = read_tensors(folder, prefix)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:300]
        raise UsageError(
            f"{where_of(folder)}: its '{prefix}*' weights do not fit ({reason})"
        ) from None
    return head.to(dtype)


def finish(model: TokenHead, folder: Folder, device: str) -> TokenHead:
    from tdrm_cli.prm import check_weights_finite

    check_weights_finite(model, where_of(folder))
    return model.to(device).eval()


def backbone_with_head(
    folder: Folder, make_head, prefix: str, dtype: Any, device: str, trust_remote_code: bool
) -> TokenHead:
    """The folder's transformers backbone (the base model of its `model_type`) under the
    head `make_head(config)`, whose weights are the folder's tensors under `prefix`;
    finite-checked, on `device`, in eval mode."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    dtype = torch_dtype(dtype, device)
    config = load_config(folder, trust_remote_code)
    backbone = load_model(MODEL_MAPPING[type(config)], folder, config, dtype)
    head = load_head(make_head(config), folder, prefix, dtype)
    return finish(TokenHead(backbone, head), folder, device)


def option_text(options: dict[str, str], key: str, default: str, folder: Folder) -> str:
    """A text option that may not be empty."""
    value = options.get(key, default)
    if not value:
        raise UsageError(f"--prm-option {key}= (for {where_of(folder)}): may not be empty")
    return value
