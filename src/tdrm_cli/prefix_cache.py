"""Per-sequence KV caches, batched with padding, so a search continues prefixes instead of re-reading them.

A `Cached` is one sequence's token ids and the keys/values of its first `cached` tokens.
`make_batch` lays rows out as

    [pad | cached tokens | pad | uncached tokens]      (width C + N)

with the cached K/V right-aligned in the first C positions, so only the N uncached columns
run through the model and every row's last token sits in the last column (where
generation appends and where a PRM reads the new step's value). Position ids come from
the attention mask, so padding never shifts a token's position: K/V computed in one
batch layout stay valid in any other. `row_cached` copies one row's real positions back
out. Only full-attention models qualify (`supports_prefix_cache`); sliding-window
caches drop old positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any


@dataclass
class Cached:
    ids: list[int]
    kv: list[tuple[Any, Any]] | None = None
    """Per layer (keys, values), each `[heads, T, head_dim]` for the first T tokens of `ids`."""

    @property
    def cached(self) -> int:
        return 0 if self.kv is None else int(self.kv[0][0].shape[1])


@dataclass
class Batch:
    input_ids: Any
    attention_mask: Any
    position_ids: Any
    cache: Any
    """A DynamicCache holding the first `width_cached` positions."""
    width_cached: int
    width_new: int
    rows: list[Cached]


def cache_arg(model: Any) -> str:
    """The name `forward` takes the cache by (`cache` in recent transformers, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def supports_prefix_cache(model: Any) -> bool:
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    layer_types = getattr(config, "layer_types", None) or []
    return not getattr(config, "use_sliding_window", False) and all(
        t == "full_attention" for t in layer_types
    )


def growing_layer(keys: Any, values: Any, length: int) -> Any:
    """A cache layer over preallocated `[batch, heads, capacity, dim]` buffers holding `length` positions.

    transformers' DynamicLayer concatenates the whole cache at every decoding step, which
    copies O(length) per token; this one writes only the new positions into the spare room
    (and doubles the buffers when they are full)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self._keys, self._values, self.length = keys, values, length
            self.device, self.is_initialized = keys.device, True
            self._views()

        def _views(self) -> None:
            self.keys, self.values = (
                self._keys[:, :, : self.length],
                self._values[:, :, : self.length],
            )

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            end = self.length + key_states.shape[-2]
            if end > self._keys.shape[2]:
                self._keys = torch.cat([self._keys, torch.zeros_like(self._keys)], dim=2)
                self._values = torch.cat([self._values, torch.zeros_like(self._values)], dim=2)
                return self.update(key_states, value_states)
            self._keys[:, :, self.length : end] = key_states
            self._values[:, :, self.length : end] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return GrowingLayer()


def make_batch(rows: list[Cached], pad_id: int, device: Any, room: int = 0) -> Batch:
    """The rows as one padded batch over a cache of their cached tokens, with room reserved for
    the uncached tokens and `room` more (what the caller appends, e.g. generated tokens)."""
    import torch
    from transformers import DynamicCache

    width_cached = max(r.cached for r in rows)
    width_new = max(len(r.ids) - r.cached for r in rows)
    input_ids = torch.full((len(rows), width_cached + width_new), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        c, n = r.cached, len(r.ids) - r.cached
        input_ids[i, width_cached - c : width_cached] = torch.tensor(r.ids[:c], dtype=torch.long)
        input_ids[i, width_cached + width_new - n :] = torch.tensor(r.ids[c:], dtype=torch.long)
        mask[i, width_cached - c : width_cached] = 1
        mask[i, width_cached + width_new - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    if width_cached:
        template = next(r.kv for r in rows if r.kv is not None)
        capacity = width_cached + width_new + room
        layers = []
        for layer, (k0, v0) in enumerate(template):
            keys = k0.new_zeros((len(rows), k0.shape[0], capacity, k0.shape[2]))
            values = v0.new_zeros((len(rows), v0.shape[0], capacity, v0.shape[2]))
            for i, r in enumerate(rows):
                if r.cached:
                    keys[i, :, width_cached - r.cached : width_cached] = r.kv[layer][0]
                    values[i, :, width_cached - r.cached : width_cached] = r.kv[layer][1]
            layers.append(growing_layer(keys.to(device), values.to(device), width_cached))
        cache.layers = layers
    return Batch(
        input_ids.to(device),
        mask.to(device),
        positions.to(device),
        cache,
        width_cached,
        width_new,
        rows,
    )


def row_cached(batch: Batch, cache: Any, i: int, extra_ids: list[int], extra_cached: int) -> Cached:
    """Row i's ids + `extra_ids` (appended after the batch, e.g. generated), with the K/V of its
    cached and new tokens and of the first `extra_cached` extra ones (copied out of `cache`)."""
    import torch

    r, c_max, n_max = batch.rows[i], batch.width_cached, batch.width_new
    n = len(r.ids) - r.cached
    index = torch.cat(
        [
            torch.arange(c_max - r.cached, c_max),
            torch.arange(c_max + n_max - n, c_max + n_max + extra_cached),
        ]
    ).to(cache.layers[0].keys.device)
    kv = [
        (layer.keys[i].index_select(1, index), layer.values[i].index_select(1, index))
        for layer in cache.layers
    ]
    return Cached(r.ids + extra_ids, kv)
