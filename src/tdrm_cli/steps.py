"""Steps: one separator convention, prompt building, piecewise tokenization.

A solution is a list of steps. Generated text is split on the separator; for scoring,
the prompt and every `step + separator` piece are tokenized on their own and
concatenated, so a prefix has the same tokens whether it is scored alone or inside
the whole solution. The value of step t is read at the last token of its piece.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tdrm_cli.errors import JSON_ERRORS, UsageError, error_line, first_line

DEFAULT_SEPARATOR = "\n\n"
PLAIN_TEMPLATE = "Question: {question}\nAnswer:\n\n"
POLICY_META = "tdrm_policy.json"


def split_steps(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Non-empty, stripped steps of a generated solution."""
    return [step.strip() for step in text.split(separator) if step.strip()]


def join_steps(steps: list[str], separator: str = DEFAULT_SEPARATOR) -> str:
    return separator.join(steps)


def read_json_object(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a one-line UsageError naming it."""
    where = f"{path} ({what})" if what else str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, *JSON_ERRORS) as e:  # UnicodeDecodeError is a ValueError too
        raise UsageError(f"{where}: not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


def check_prompt_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The prompt-building fields of `tdrm_policy.json` / `tdrm_prm.json`, checked once at load:
    a bad field is a one-line UsageError naming `where` and the field, not a failure later."""
    separator = meta.get("separator")
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise UsageError(f"{where}: field 'separator' must be a non-empty string")
    template = meta.get("prompt_template")
    if template is not None and not isinstance(template, str):
        raise UsageError(f"{where}: field 'prompt_template' must be a string")
    if template:
        try:
            template.format(question="")
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(
                f"{where}: field 'prompt_template' must hold {{question}} and no other "
                f"placeholder ({error_line(e)})"
            ) from None
        if "{question}" not in template:
            raise UsageError(f"{where}: field 'prompt_template' has no {{question}}")
    for name in ("task", "prompt_format"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise UsageError(f"{where}: field '{name}' must be a string")
    return meta


def read_policy_meta(model_dir: str | Path) -> dict[str, Any]:
    """`tdrm_policy.json` of a model folder (prompt template, separator, task), or {}."""
    path = Path(model_dir) / POLICY_META
    if not path.is_file():
        return {}
    return check_prompt_meta(read_json_object(path), str(path))


def prompt_format(tokenizer: Any, meta: dict[str, Any]) -> str:
    """Which prompt format a policy uses: its own template, its chat template, or plain."""
    if meta.get("prompt_template"):
        return "template"
    if getattr(tokenizer, "chat_template", None):
        return "chat"
    return "plain"


def build_prompt(tokenizer: Any, question: str, meta: dict[str, Any]) -> str:
    fmt = prompt_format(tokenizer, meta)
    if fmt == "template":
        return meta["prompt_template"].format(question=question)
    if fmt == "chat":
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(question=question)


def encode_pieces(
    tokenizer: Any, prompt: str, steps: list[str], separator: str = DEFAULT_SEPARATOR
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + every `step + separator`, and the index of each step's last token."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    ends = []
    for step in steps:
        piece = tokenizer(step + separator, add_special_tokens=False)["input_ids"]
        if not piece:
            piece = tokenizer(separator, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        ends.append(len(ids) - 1)
    return ids, ends
