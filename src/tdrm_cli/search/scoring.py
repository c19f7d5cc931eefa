"""PRM step scorers for the search: the value of a prefix's newest step.

`KVScorer` runs only the new step's tokens on top of the parent prefix's cached
keys/values, equal to scoring the whole prefix in one pass, which `OnePassScorer` does
for models without a plain full-attention cache (or a PRM head that reads every token).
Per-step cost therefore stays flat with depth (bench/search_cost.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdrm_cli.prefix_cache import Cached, cache_arg, make_batch, row_cached, supports_prefix_cache
from tdrm_cli.search.methods import Prefix, StepScorer
from tdrm_cli.steps import encode_pieces


class OnePassScorer:
    """Scores the whole prefix in one forward pass (PRM.score) and keeps no state."""

    def __init__(self, prm: Any, batch_size: int = 32):
        self.prm, self.batch_size = prm, batch_size

    def score_last(self, prefixes: Sequence[Prefix]) -> list[tuple[float, Any]]:
        values = self.prm.score(
            [p.question for p in prefixes], [p.steps for p in prefixes], batch_size=self.batch_size
        )
        return [(v[-1], None) for v in values]


class KVScorer:
    """Scores only the new step's tokens, on top of the parent prefix's cached keys/values.

    Equal to `PRM.score` on the whole prefix (causal attention; the PRM tokenizes
    piecewise, so a child's tokens extend its parent's); tests check it."""

    def __init__(self, prm: Any, batch_size: int = 32):
        self.prm, self.batch_size = prm, batch_size
        self.cache_arg = cache_arg(prm.model)
        self._no_steps = len(encode_pieces(prm.tokenizer, "", [], prm.separator)[0])

    def _ids(self, prefix: Prefix) -> list[int]:
        """The prefix's PRM tokens: its parent's plus the new step's piece (piecewise tokenization)."""
        if prefix.state is None:
            return self.prm.encode(prefix.question, prefix.steps).ids
        ids, _ = encode_pieces(self.prm.tokenizer, "", prefix.steps[-1:], self.prm.separator)
        return prefix.state.ids + ids[self._no_steps :]

    def score_last(self, prefixes: Sequence[Prefix]) -> list[tuple[float, Any]]:
        import torch

        rows = [Cached(self._ids(p), p.state.kv if p.state else None) for p in prefixes]
        out: list[tuple[float, Any] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = make_batch(
                [rows[i] for i in chunk], self.prm.tokenizer.pad_token_id, self.prm.device
            )
            c = batch.width_cached
            with torch.inference_mode():
                logits = self.prm.model(
                    input_ids=batch.input_ids[:, c:],
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids[:, c:],
                    use_cache=True,
                    **{self.cache_arg: batch.cache},
                ).logits
            values = torch.sigmoid(logits[:, -1, 0].float()).tolist()
            for j, i in enumerate(chunk):
                out[i] = (values[j], row_cached(batch, batch.cache, j, [], 0))
        return out


def make_scorer(prm: Any, batch_size: int) -> StepScorer:
    return (
        KVScorer(prm, batch_size)
        if supports_prefix_cache(prm.model) and getattr(prm, "head", "linear") == "linear"
        else OnePassScorer(prm, batch_size)
    )
