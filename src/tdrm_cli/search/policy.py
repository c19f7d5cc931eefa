"""The search's step generator: one step at a time from a HF causal LM.

A step is generated from the prompt + the kept prefix until the separator, EOS or
`--max-step-tokens`; prefixes are never regenerated: the policy continues every kept
prefix from its KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdrm_cli.generation import HFBackend, sampling_kwargs
from tdrm_cli.prefix_cache import Cached, cache_arg, make_batch, row_cached, supports_prefix_cache
from tdrm_cli.search.methods import Prefix, Step
from tdrm_cli.steps import DEFAULT_SEPARATOR, build_prompt, read_policy_meta


def separator_stop(tokenizer: Any, separator: str, prompt_width: int, tail: int = 8):
    """A StoppingCriteria ending a row once its generated tail decodes to text holding the separator."""
    import torch
    from transformers import StoppingCriteria

    class SeparatorStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, prompt_width:][:, -tail:]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            return torch.tensor(
                [separator in text for text in texts], dtype=torch.bool, device=input_ids.device
            )

    return SeparatorStop()


class HFStepPolicy:
    """One step at a time from a HF causal LM: batched `generate` stopping at the separator.

    The model, tokenizer and stop tokens come from `generation.HFBackend`; its `generate`
    is not used, since a step continues from its prefix's KV cache (the state returned
    with the step before), so neither the prompt nor earlier steps are read again;
    `cache=False`, or a model with sliding-window attention, re-reads the prefix text
    instead (same tokens for the character tokenizer, possibly re-split for BPE)."""

    def __init__(
        self,
        model_path: str,
        batch_size: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_step_tokens: int = 48,
        trust_remote_code: bool = False,
        cache: bool = True,
        allow_pickle: bool = False,
    ):
        self.backend = HFBackend(
            model_path,
            batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        self.tokenizer = self.backend.tokenizer
        self.meta = read_policy_meta(model_path)
        self.separator = self.meta.get("separator", DEFAULT_SEPARATOR)
        self.batch_size, self.temperature, self.top_p = batch_size, temperature, top_p
        self.max_step_tokens = max_step_tokens
        self.cache = cache and supports_prefix_cache(self.backend.model)
        self.cache_arg = cache_arg(self.backend.model)
        self.generate_kwargs: dict[str, Any] = {}
        """Extra `model.generate` arguments (bench/search_cost.py passes a logits processor)."""
        self._prompts: dict[str, str] = {}

    def text(self, question: str, steps: list[str]) -> str:
        """Prompt + the kept steps, each followed by the separator: where the next step starts."""
        if question not in self._prompts:
            self._prompts[question] = build_prompt(self.tokenizer, question, self.meta)
        return self._prompts[question] + "".join(step + self.separator for step in steps)

    def _row(self, prefix: Prefix) -> Cached:
        if self.cache and prefix.state is not None:
            return prefix.state
        text = self.text(prefix.question, prefix.steps)
        bos = self.tokenizer.bos_token  # chat templates write their own BOS
        encoded = self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))
        return Cached(list(encoded["input_ids"]))

    def next_steps(self, prefixes: Sequence[Prefix], n: int, seed: int) -> list[list[Step]]:
        import torch

        rows = [self._row(p) for p in prefixes]
        flat = [i for i in range(len(rows)) for _ in range(n)]
        # Similar lengths share a batch: less padding.
        order = sorted(range(len(flat)), key=lambda j: len(rows[flat[j]].ids))
        out: list[Step | None] = [None] * len(flat)
        sampling = sampling_kwargs(self.temperature, self.top_p)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = make_batch(
                [rows[flat[j]] for j in chunk],
                self.tokenizer.pad_token_id,
                self.backend.device,
                room=self.max_step_tokens,
            )
            width = batch.width_cached + batch.width_new
            torch.manual_seed(seed * 1_000_003 + start)
            with torch.inference_mode():
                generated = self.backend.model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=self.max_step_tokens,
                    eos_token_id=self.backend.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    return_dict_in_generate=True,
                    stopping_criteria=[separator_stop(self.tokenizer, self.separator, width)],
                    **{self.cache_arg: batch.cache},
                    **sampling,
                    **self.generate_kwargs,
                )
            cache = getattr(generated, "cache", None) or getattr(generated, "past_key_values", None)
            for k, (j, ids) in enumerate(
                zip(chunk, generated.sequences[:, width:].tolist(), strict=True)
            ):
                step, kept = self._step(ids)
                if self.cache and step.stop == "separator":  # only such steps are continued
                    step.state = row_cached(batch, cache, k, kept, len(kept) - 1)
                out[j] = step
        return [out[i : i + n] for i in range(0, len(out), n)]

    def _step(self, ids: list[int]) -> tuple[Step, list[int]]:
        """The step a row of generated ids holds, and the ids it consists of."""
        # rows stopped early (EOS or the separator) are padded after their end
        ends = set(self.backend.stop_ids) | {self.tokenizer.pad_token_id}
        stop = next((i for i, token in enumerate(ids) if token in ends), None)
        kept = ids if stop is None else ids[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        if self.separator in text:
            return Step(text[: text.index(self.separator)], len(kept), "separator"), kept
        if stop is not None and ids[stop] in self.backend.stop_ids:
            return Step(text, len(kept) + 1, "eos"), kept
        return Step(text, len(kept), "length"), kept
