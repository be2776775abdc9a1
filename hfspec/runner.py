"""Forwards of one model over its KV store, with explicit masks (hfspec.masks).

``ModelRunner`` is the eager runner; ``hfspec.lowering`` provides a compiled one with the same
interface (fixed node budget, static store, graphs for the fixed-shape part).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from hfspec.kv import DynamicStore, KVStore, cache_argument
from hfspec.masks import grouped_query_sdpa, layer_windows, model_masks
from hfspec.step import VerifyBatch


class ModelRunner:
    """Eager forwards: any number of new tokens, one graph-free call each."""

    node_budget: int | None = None  # eager verify takes the proposal's own width

    def __init__(self, model: PreTrainedModel, store: KVStore, head: torch.nn.Module | None = None) -> None:
        self.model = model
        self.store = store
        self.head = head  # None: the model's own head; else hidden (B, Q, H) -> logits (B, Q, V), e.g. PrunedHead
        self.windows = layer_windows(model)
        self.cache_arg = cache_argument(model)  # read once: the forward (maybe compiled) only looks it up
        self.forwards = 0

    def run(self, tokens, positions, valid, visible, keep: int) -> torch.Tensor:
        """Write ``tokens`` (B, Q) into the store and return the last ``keep`` columns' logits (B, keep, V).

        positions (B, Q) long, valid (B, Q) bool, visible (B, Q, Q) bool (see hfspec.step.VerifyBatch).
        """
        device = self.model.device
        tokens, positions, valid = tokens.to(device), positions.to(device), valid.to(device)
        visible = visible.to(device)
        visible = (visible & valid[:, None, :]) | torch.eye(visible.shape[1], dtype=torch.bool, device=device)
        start, key_valid, key_pos = self.store.write(valid, positions)
        mask = model_masks(self.model, self.windows, key_valid, key_pos, start, visible, positions, self.model.dtype)
        self.forwards += 1
        return self._call(tokens, positions, mask, keep)

    def _call(self, tokens, positions, mask, keep: int) -> torch.Tensor:
        with grouped_query_sdpa():
            return self._forward(tokens, positions, mask, keep)

    def _forward(self, tokens, positions, mask, keep: int) -> torch.Tensor:
        """The model (or its base model and ``head``) over the store: logits (B, keep, V)."""
        inputs = {
            "input_ids": tokens,
            "attention_mask": mask,
            "position_ids": positions,
            self.cache_arg: self.store.cache,
            "use_cache": True,
        }
        if self.head is None:
            return self.model(**inputs, logits_to_keep=keep).logits[:, -keep:]
        return self.head(self.model.base_model(**inputs).last_hidden_state[:, -keep:])

    def verify(self, batch: VerifyBatch) -> torch.Tensor:
        """Logits (B, Q - root, V) for the root and every node."""
        keep = batch.num_columns - batch.root
        return self.run(batch.tokens, batch.positions, batch.valid, batch.visible, keep)

    def chain(self, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, keep: int) -> torch.Tensor:
        """A causal run of new tokens (catch-up slots + one more), for draft models."""
        q = tokens.shape[1]
        causal = torch.ones((q, q), dtype=torch.bool, device=tokens.device).tril()
        return self.run(tokens, positions, valid, causal.expand(tokens.shape[0], q, q), keep)


def eager_runner(model: PreTrainedModel, batch: int, head: torch.nn.Module | None = None) -> ModelRunner:
    return ModelRunner(model, DynamicStore(batch, device=model.device), head)
