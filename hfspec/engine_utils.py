"""Small tensor helpers shared by the engine and proposers."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position of each slot = number of valid slots before it (HF's rule; masked slots get 1)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def lm_head_width(model: PreTrainedModel) -> int:
    """Width of the distribution the model produces (may exceed the tokenizer's length)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def fit_width(logits: torch.Tensor, width: int) -> torch.Tensor:
    """Pad (with -inf) or cut the last axis to ``width`` so draft and target scores align."""
    have = logits.shape[-1]
    if have == width:
        return logits
    if have > width:
        return logits[..., :width]
    pad = logits.new_full((*logits.shape[:-1], width - have), float("-inf"))
    return torch.cat([logits, pad], dim=-1)

