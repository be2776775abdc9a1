"""KV stores: where a model's keys/values live between forwards, behind one small protocol.

Both stores hold the engine's shared slot layout (engine.py, "Batch layout"): slot s of every
row, with per-slot validity and token position kept *here*, next to the keys, so masks are
always built from what the cache really holds. Committing a step keeps the accepted path: for
a chain that is a prefix of the written slots (nothing moves, the length just shrinks); for a
tree the accepted nodes are gathered into consecutive slots, per row.

- ``DynamicStore``: transformers' ``DynamicCache`` with plain full-length layers (never HF's
  sliding layers, which cannot roll back: the masks carry the window instead).
- ``StaticStore``: fixed-capacity buffers written by index (``index_copy_``), rolled back by
  resetting the length, like gpt-fast's ``KVCache.update``. Compiled graphs take its buffers
  as inputs, so frozen weights and a mutable cache coexist (docs/lowering.md).
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import CacheLayerMixin

from hfspec.exceptions import ConfigurationError


def cache_argument(model: torch.nn.Module) -> str:
    """The name a model's forward takes its cache under: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (5.24 still accepts the old name, deprecated, with a warning)."""
    forward = getattr(model, "forward", model)
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class KVStore(Protocol):
    cache: Cache  # passed to the model under cache_argument(model)
    length: int  # slots [0, length) are written
    valid: torch.Tensor  # (B, length) bool: slot holds a token of the row
    pos: torch.Tensor  # (B, length) long: token position of each slot

    def write(self, new_valid: torch.Tensor, new_pos: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Reserve slots for the next forward's Q new tokens; returns (new_start, key_valid (B, K), key_pos (B, K))."""
        ...

    def keep(self, base: int, columns: torch.Tensor, valid: torch.Tensor) -> None:
        """Keep slots [0, base), then per row the written slots ``base + columns[b]`` (B, m), as slots
        [base, base + m) with validity ``valid`` (B, m); drop the rest."""
        ...

    def truncate(self, length: int) -> None:
        """Drop slots >= length."""
        ...


class _Bookkeeping:
    """Validity/positions of written slots, shared by both stores."""

    def _init_book(self, batch: int, device) -> None:
        self.length = 0
        self.valid = torch.zeros((batch, 0), dtype=torch.bool, device=device)
        self.pos = torch.zeros((batch, 0), dtype=torch.long, device=device)

    def _append(self, new_valid: torch.Tensor, new_pos: torch.Tensor) -> int:
        start = self.length
        self.valid = torch.cat([self.valid, new_valid.to(self.valid.device, torch.bool)], dim=1)
        self.pos = torch.cat([self.pos, new_pos.to(self.pos.device, torch.long)], dim=1)
        self.length = self.valid.shape[1]
        return start

    def _keep_book(self, base: int, columns: torch.Tensor, valid: torch.Tensor) -> None:
        cols = base + columns.to(self.pos.device)
        self.pos = torch.cat([self.pos[:, :base], self.pos.gather(1, cols)], dim=1)
        self.valid = torch.cat([self.valid[:, :base], valid.to(self.valid.device, torch.bool)], dim=1)
        self.length = self.valid.shape[1]

    def _truncate_book(self, length: int) -> None:
        self.valid, self.pos = self.valid[:, :length], self.pos[:, :length]
        self.length = min(self.length, length)


def _is_prefix(columns: torch.Tensor) -> bool:
    return bool((columns == torch.arange(columns.shape[1], device=columns.device)).all())


def _gather_slots(t: torch.Tensor, base: int, columns: torch.Tensor) -> torch.Tensor:
    """t (B, H, S, D) → (B, H, m, D): per row, slots base + columns[b]."""
    b, h, _, d = t.shape
    idx = (base + columns.to(t.device))[:, None, :, None].expand(b, h, columns.shape[1], d)
    return t.gather(2, idx)


class DynamicStore(_Bookkeeping):
    """Growing cache (eager decoding). Rollback = crop; tree commit = per-row gather."""

    def __init__(self, batch: int, device=None) -> None:
        self.cache = DynamicCache()
        self._init_book(batch, device)

    def write(self, new_valid, new_pos):
        start = self._append(new_valid, new_pos)
        return start, self.valid, self.pos

    def keep(self, base, columns, valid):
        m = columns.shape[1]
        if _is_prefix(columns):
            self.truncate(base + m)
        else:
            for layer in self.cache.layers:
                layer.keys = torch.cat([layer.keys[:, :, :base], _gather_slots(layer.keys, base, columns)], dim=2)
                layer.values = torch.cat([layer.values[:, :, :base], _gather_slots(layer.values, base, columns)], dim=2)
        self._keep_book(base, columns, valid)

    def truncate(self, length):
        extra = int(self.cache.get_seq_length()) - length
        if extra > 0:
            self.cache.crop(-extra)
        self._truncate_book(length)


class _IndexedLayer(CacheLayerMixin):
    """One layer's fixed buffers (B, H, capacity, D), written at the store's current slots."""

    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(self, store: StaticStore) -> None:
        super().__init__()
        self.store = store

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, _, dk = key_states.shape
        cap = self.store.capacity + 1  # a spare slot: a view never spans the whole buffer (dynamo would
        # specialize a slice that reaches the end, and recompile the one dynamic-length graph)
        self.keys = key_states.new_zeros((b, h, cap, dk))
        self.values = value_states.new_zeros((b, h, cap, value_states.shape[-1]))
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self.store.slots
        # a graph computing under autocast hands lower-precision states: the buffers keep their dtype
        self.keys.index_copy_(2, slots, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, slots, value_states.to(self.values.dtype))
        view = self.store.view  # attention reads the written slots only, not the whole capacity
        return self.keys[:, :, :view], self.values[:, :, :view]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.view, 0

    def get_seq_length(self) -> int:
        return self.store.length

    def get_max_length(self) -> int:
        return self.store.capacity


class StaticStore(_Bookkeeping):
    """Fixed capacity; written by index; rolled back by resetting ``length``.

    The buffers are allocated on the first forward (shapes come from the model) and reused
    across calls (``reset``), so a compiled graph that reads them never sees new tensors.
    Attention reads a *view* of the first ``view`` slots (the written ones), not the capacity:
    with a mask, SDPA's cost grows with the keys it is given (measured on the 0.5B's 24 layers,
    one query: 2 ms over 400 keys, 18 ms over 2,057), so a roomy capacity costs nothing per step.
    Compiled graphs take the view length as a dynamic dimension (hfspec.lowering).
    """

    def __init__(self, num_layers: int, batch: int, capacity: int, device=None) -> None:
        self.capacity = capacity
        self.batch = batch
        self.slots = torch.zeros(0, dtype=torch.long, device=device)
        self.view = 0  # slots attention reads in the next forward (= length after its write)
        self.cache = Cache(layers=[_IndexedLayer(self) for _ in range(num_layers)])
        self._init_book(batch, device)

    @property
    def allocated(self) -> bool:
        """Buffers exist (after the first forward): compiled graphs must only ever see allocated buffers."""
        return all(layer.is_initialized for layer in self.cache.layers)

    def reset(self) -> None:
        """Start a new call; buffers stay allocated (stale contents are never visible: masks read ``valid``)."""
        self._init_book(self.batch, self.valid.device)

    def write(self, new_valid, new_pos):
        q = new_valid.shape[1]
        if self.length + q > self.capacity:
            raise ConfigurationError(
                f"static KV cache capacity {self.capacity} exceeded ({self.length} slots used, {q} more needed): "
                "build the plan with a larger capacity= or lower max_new_tokens."
            )
        start = self._append(new_valid, new_pos)
        self.slots = torch.arange(start, start + q, device=self.slots.device)
        self.view = self.length
        return start, self.valid, self.pos

    def keep(self, base, columns, valid):
        if not _is_prefix(columns):
            m = columns.shape[1]
            target = torch.arange(base, base + m, device=self.slots.device)
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.keys.index_copy_(2, target, _gather_slots(layer.keys, base, columns))
                    layer.values.index_copy_(2, target, _gather_slots(layer.values, base, columns))
        self._keep_book(base, columns, valid)

    def truncate(self, length):
        self._truncate_book(length)
