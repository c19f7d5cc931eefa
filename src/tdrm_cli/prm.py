"""Process reward model: a causal-LM backbone with a scalar head, scored in one pass.

`V(s_t) = sigmoid(head(h))` at the last token of step t (docs/design.md#prm-scoring). The prompt
and every `step + separator` piece are tokenized on their own and concatenated
(`steps.encode_pieces`), so with causal attention one forward pass over the whole
solution gives exactly the values of scoring every prefix separately.

A saved PRM is a plain HF folder (`AutoModelForTokenClassification`, `num_labels=1`,
safetensors) plus `tdrm_prm.json`, which records how prompts and steps were built in
training so `load_prm` scores the same way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.generation import weights_kwargs
from tdrm_cli.runs import resolve_model
from tdrm_cli.steps import (
    DEFAULT_SEPARATOR,
    build_prompt,
    check_prompt_meta,
    encode_pieces,
    prompt_format,
    read_json_object,
)
from tdrm_cli.voting import AGGREGATIONS

PRM_META = "tdrm_prm.json"

# ---------------------------------------------------------------- encoding and batching


@dataclass
class Encoded:
    """Token ids of prompt + steps, and the index of every step's last token."""

    ids: list[int]
    ends: list[int]
    prompt_len: int
    sep_tokens: int = 0
    """How many of the last tokens of every step's piece are the separator (the likelihood
    head reads only the steps' own tokens)."""

    @property
    def step_tokens(self) -> list[int]:
        """Tokens per step (the `d` of the per-token smoothness)."""
        starts = [self.prompt_len - 1, *self.ends[:-1]]
        return [end - start for start, end in zip(starts, self.ends, strict=True)]


def pad_batch(rows: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`/`attention_mask` and `[batch, steps]` step indices and mask.

    Right padding keeps every real token at the position it has alone, so values do not
    depend on what shares the batch. Padded step slots point at token 0 and are masked.
    `text_mask` (`[batch, width]`) marks the steps' own tokens, prompt and separators left
    out (for the likelihood head).
    """
    import torch

    width = max(len(r.ids) for r in rows)
    steps = max(max(len(r.ends) for r in rows), 1)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    step_index = torch.zeros((len(rows), steps), dtype=torch.long)
    step_mask = torch.zeros((len(rows), steps), dtype=torch.bool)
    text_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.ids)] = torch.tensor(r.ids)
        attention_mask[i, : len(r.ids)] = 1
        step_index[i, : len(r.ends)] = torch.tensor(r.ends, dtype=torch.long)
        step_mask[i, : len(r.ends)] = True
        text_mask[i, r.prompt_len : len(r.ids)] = True
        for end in r.ends if r.sep_tokens else ():
            text_mask[i, max(end + 1 - r.sep_tokens, r.prompt_len) : end + 1] = False
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "step_index": step_index,
        "step_mask": step_mask,
        "text_mask": text_mask,
    }


HEADS = {
    "linear": "value logit = a linear head on the last token's hidden state",
    "likelihood": "the linear head plus the lowest log-probability the backbone's own LM "
    "(tied input embeddings) gives any token of the steps so far (separators left out: a "
    "policy ends its last step with a stop token, not a separator): it reads how likely the "
    "backbone finds what each step states",
}
"""Value heads a PRM can have (`tdrm_prm.json` `head`; absent means `linear`)."""


def step_logits(model: Any, batch: dict[str, Any], head: str = "linear"):
    """Head logits at each step's last token: `[batch, steps]` from one forward pass over
    a `pad_batch` batch (its tensors on the model's device)."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if head == "linear":
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, 1]
        return logits[..., 0].gather(1, batch["step_index"])
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    linear = value_head(model)(hidden)[..., 0]
    floor = likelihood_floor(model, hidden, input_ids, batch["text_mask"])
    return (linear + floor.to(linear.dtype)).gather(1, batch["step_index"])


HEAD_MODULES = ("score", "classifier")
"""The names transformers gives a token-classification head."""


def value_head(model: Any):
    """The token-classification head of a transformers model (`score` or `classifier`)."""
    head = next((getattr(model, n) for n in HEAD_MODULES if getattr(model, n, None)), None)
    if head is None:
        raise UsageError(f"{type(model).__name__}: no 'score' or 'classifier' head")
    return head


def likelihood_floor(model: Any, hidden, input_ids, text_mask):
    """`[B, T]`: at position j, the lowest log-probability the backbone's LM (hidden states
    times the tied input embeddings) gives any token up to j that `text_mask` marks (0
    before the first)."""
    import torch

    embeddings = model.get_input_embeddings().weight
    logprobs = torch.log_softmax((hidden[:, :-1] @ embeddings.T).float(), dim=-1)
    token = logprobs.gather(-1, input_ids[:, 1:, None])[..., 0]  # log p(token j | < j), j >= 1
    token = torch.cat([torch.zeros_like(token[:, :1]), token], dim=1)
    in_steps = text_mask.to(input_ids.device)
    return torch.cummin(torch.where(in_steps, token, torch.zeros_like(token)), dim=1).values


def check_head(head: str, config: Any, where: str) -> None:
    """A one-line UsageError unless `head` is known and the backbone can carry it."""
    if head not in HEADS:
        raise UsageError(f"{where}: head '{head}' is unknown (known: {', '.join(HEADS)})")
    if head == "likelihood" and not getattr(config, "tie_word_embeddings", False):
        raise UsageError(
            f"{where}: head 'likelihood' needs a backbone whose LM head is tied to its input "
            f"embeddings (tie_word_embeddings), which this one is not"
        )


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices sorted by length, cut into batches: little padding per batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


# ---------------------------------------------------------------- backbone checks and loading


def check_causal_lm(model_path: str, role: str = "base", trust_remote_code: bool = False) -> None:
    """Refuse anything that is not a causal LM with a token-classification head in transformers."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        raise UsageError(f"--{role} {model_path}: unreadable model config ({first})") from None
    model_type = getattr(config, "model_type", None)
    archs = list(getattr(config, "architectures", None) or [])
    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if archs:
        causal = any(a.endswith("ForCausalLM") or a in causal_names for a in archs)
    else:
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        raise UsageError(
            f"--{role} {model_path}: not a causal LM (architectures: {', '.join(archs) or 'none'}, "
            f"model_type: {model_type})"
        )
    remote_head = trust_remote_code and "AutoModelForTokenClassification" in (
        getattr(config, "auto_map", None) or {}
    )
    if model_type not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES and not remote_head:
        raise UsageError(
            f"--{role} {model_path}: transformers has no token-classification head for '{model_type}'"
        )


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    # generation.load_tokenizer keeps tdrm's character tokenizer intact in folders saved
    # before it was spelled byte-level (transformers 5 AutoTokenizer drops their whitespace).
    from tdrm_cli.generation import load_tokenizer as load_saved_tokenizer

    tokenizer = load_saved_tokenizer(model_path, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_value_model(
    model_path: str,
    pad_token_id: int,
    role: str = "base",
    trust_remote_code: bool = False,
    dtype=None,
    allow_pickle: bool = False,
    new_head: str = "",
    trained: bool = False,
):
    """`AutoModelForTokenClassification` with one label on top of a backbone. A checkpoint
    without the head gets a new one, said by the line `new_head` (if any); for a `trained`
    PRM the missing head is a warning instead."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from tdrm_cli.console import log
    from tdrm_cli.generation import from_pretrained, model_load_errors

    with model_load_errors(f"--{role} {model_path}"):
        config = AutoConfig.from_pretrained(
            model_path, num_labels=1, trust_remote_code=trust_remote_code
        )
    # No dropout before the head: the training-time value is then the same function that
    # scoring uses, which the bootstrapped TD target relies on.
    config.classifier_dropout = 0.0
    config.pad_token_id = pad_token_id
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, new = from_pretrained(
        AutoModelForTokenClassification, model_path, f"--{role} {model_path}",
        () if trained else HEAD_MODULES, config=config,
        trust_remote_code=trust_remote_code, **weights_kwargs(model_path, allow_pickle), **kwargs,
    )  # fmt: skip
    if new and new_head:
        log(new_head)
    return model


# ---------------------------------------------------------------- the PRM


class TooLong(UsageError):
    """A solution (prompt + steps) with more tokens than the PRM may score."""


class NonFinite(UsageError):
    """The PRM gave a NaN step value (its weights or inputs overflowed)."""


PROMPT_CACHE = 4096
"""Distinct questions whose prompt `PRM` keeps encoded (least recently used dropped)."""


class PRM:
    """A loaded PRM: `score(problems, solutions)` gives one value in (0, 1) per step.

    A solution longer than `max_tokens` (default: the backbone's context) is refused with
    `TooLong` before any forward pass.
    """

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any]):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.separator: str = meta.get("separator") or DEFAULT_SEPARATOR
        self.agg: str = meta.get("agg", "min")
        self.head: str = meta.get("head") or "linear"
        self.max_tokens: int | None = getattr(model.config, "max_position_embeddings", None)
        self._prompts: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._chars_per_token: int | None = None
        self._separator_tokens = len(
            tokenizer(self.separator, add_special_tokens=False)["input_ids"]
        )

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _prompt(self, question: str) -> tuple[str, int]:
        """The prompt text for a question and its token count (an LRU cache: problems repeat)."""
        cached = self._prompts.get(question)
        if cached is not None:
            self._prompts.move_to_end(question)
            return cached
        prompt = build_prompt(self.tokenizer, question, self.meta)
        cached = (prompt, len(encode_pieces(self.tokenizer, prompt, [], self.separator)[0]))
        self._prompts[question] = cached
        if len(self._prompts) > PROMPT_CACHE:
            self._prompts.popitem(last=False)
        return cached

    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        prompt, prompt_len = self._prompt(question)
        ids, ends = encode_pieces(self.tokenizer, prompt, list(steps), self.separator)
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise TooLong(
                f"a solution of {len(ids)} tokens (prompt and steps) is over the PRM's limit "
                f"of {self.max_tokens} tokens"
            )
        return Encoded(ids, ends, prompt_len, self._separator_tokens)

    def surely_too_long(self, question: str, steps: Sequence[str]) -> bool:
        """True when the text alone shows the solution is over `max_tokens`, without
        tokenizing it: no token covers more characters than the vocabulary's longest entry."""
        if self.max_tokens is None:
            return False
        if self._chars_per_token is None:
            vocab = self.tokenizer.get_vocab()
            self._chars_per_token = max((len(token) for token in vocab), default=1) or 1
        chars = len(question) + sum(len(step) + len(self.separator) for step in steps)
        return chars > self.max_tokens * self._chars_per_token

    def score(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]], batch_size: int = 32
    ) -> list[list[float]]:
        """Step values of every solution; all steps of a solution in one forward pass."""
        if len(problems) != len(solutions):
            raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
        encoded = [self.encode(q, s) for q, s in zip(problems, solutions, strict=True)]
        return self.score_encoded(encoded, batch_size)

    def score_encoded(self, encoded: Sequence[Encoded], batch_size: int = 32) -> list[list[float]]:
        import torch

        values: list[list[float]] = [[] for _ in encoded]
        todo = [i for i, e in enumerate(encoded) if e.ends]  # 0-step solutions score []
        for chunk in length_buckets([len(encoded[i].ids) for i in todo], batch_size):
            rows = [todo[j] for j in chunk]
            batch = pad_batch([encoded[i] for i in rows], self.tokenizer.pad_token_id)
            with torch.inference_mode():
                logits = step_logits(
                    self.model, {k: v.to(self.device) for k, v in batch.items()}, self.head
                )
            probs = torch.sigmoid(logits.float()).cpu()
            if not bool(torch.isfinite(probs).all()):
                raise NonFinite("the PRM gave a non-finite (NaN) step value")
            for row, i in enumerate(rows):
                values[i] = probs[row, : len(encoded[i].ends)].tolist()
        return values

    def save(self, path: str | Path) -> Path:
        """HF folder (safetensors) + tokenizer + `tdrm_prm.json`."""
        from tdrm_cli.runs import atomic_write_json, save_model

        path = save_model(self.model, self.tokenizer, Path(path))
        atomic_write_json(path / PRM_META, self.meta)
        return path


LIKELIHOOD_BASELINE = "policy-likelihood"


def policy_likelihood_prm(
    model_dir: str, trust_remote_code: bool = False, allow_pickle: bool = False
) -> PRM | None:
    """The policy as an untrained PRM: the likelihood head with its linear part zeroed, so
    a step's value is sigmoid(lowest log-probability the policy gives any step token so far).
    A generative verifier for free; None when the policy's embeddings are not tied."""
    import torch

    from tdrm_cli.steps import read_policy_meta

    config = read_json_object(Path(model_dir) / "config.json", "--policy")
    if not config.get("tie_word_embeddings", False):
        return None
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    model = load_value_model(
        model_dir, tokenizer.pad_token_id, "policy", trust_remote_code, torch.float32,
        allow_pickle, f"{LIKELIHOOD_BASELINE}: value head new (its linear part zero), as intended",
    )  # fmt: skip
    head = value_head(model)
    with torch.no_grad():
        head.weight.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    meta = prm_meta(tokenizer, read_policy_meta(model_dir), head="likelihood", loss="none")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return PRM(model.to(device), tokenizer, meta)


def prm_meta(tokenizer: Any, policy_meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What `tdrm_prm.json` records: prompt building, separator, and what the PRM was trained with."""
    return {
        "prompt_format": prompt_format(tokenizer, policy_meta),
        "prompt_template": policy_meta.get("prompt_template"),
        "separator": policy_meta.get("separator") or DEFAULT_SEPARATOR,
        "task": policy_meta.get("task"),
        **extra,
    }


def check_prm_meta(meta: dict[str, Any], config: dict[str, Any], where: str) -> dict[str, Any]:
    """Every field of `tdrm_prm.json` that scoring reads, checked once when the PRM loads."""
    check_prompt_meta(meta, where)
    agg = meta.get("agg", "min")
    if not isinstance(agg, str) or agg not in AGGREGATIONS:
        raise UsageError(
            f"{where}: field 'agg' is {agg!r}; expected one of {', '.join(AGGREGATIONS)}"
        )
    head = meta.get("head") or "linear"
    if not isinstance(head, str):
        raise UsageError(f"{where}: field 'head' must be a string")
    check_head(head, SimpleNamespace(**config), where)
    for name in ("td_lambda", "gamma"):
        value = meta.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UsageError(f"{where}: field '{name}' must be a finite number")
    return meta


def nonfinite_weight(model: Any) -> str | None:
    """The name of the first weight holding NaN or inf, or None."""
    import torch

    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


def check_weights_finite(model: Any, where: str) -> None:
    """Refuse a model whose weights hold NaN or inf: it could only ever give NaN scores."""
    name = nonfinite_weight(model)
    if name is not None:
        raise UsageError(f"{where}: weight '{name}' holds non-finite values (NaN or inf)")


def load_prm(
    path_or_run: str | Path,
    role: str = "prm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> PRM:
    """A PRM from a train-prm run folder or a PRM model folder (refuses anything else).

    `dtype` defaults to bfloat16 on a GPU and float32 on the CPU.
    """
    import torch

    path = Path(path_or_run)
    # A run folder must be a complete train-prm run; a model folder needs config.json.
    model_dir, _ = resolve_model(path, role, ("train-prm",))
    meta_path = Path(model_dir) / PRM_META
    if not meta_path.is_file():
        raise UsageError(f"--{role} {path}: no {PRM_META} (not a PRM trained by tdrm train-prm)")
    config = read_json_object(Path(model_dir) / "config.json", f"--{role}")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise UsageError(f"{Path(model_dir) / 'config.json'} (--{role}): no 'model_type'")
    archs = config.get("architectures") or []
    one_label = len(config.get("id2label") or {0: 0}) == 1
    if not any(a.endswith("ForTokenClassification") for a in archs) or not one_label:
        raise UsageError(
            f"--{role} {path}: config.json is not a one-label token-classification model"
        )
    meta = check_prm_meta(
        read_json_object(meta_path, f"--{role}"), config, f"{meta_path} (--{role})"
    )
    from tdrm_cli.generation import model_load_errors

    with model_load_errors(f"--{role} {path}"):
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    model = load_value_model(
        model_dir, tokenizer.pad_token_id, role, trust_remote_code, dtype, allow_pickle,
        trained=True,
    )  # fmt: skip
    check_weights_finite(model, f"--{role} {path}")
    return PRM(model.to(device), tokenizer, meta)
