"""Explicit 4-D attention masks for every forward hfspec runs (target verify, draft steps).

Why explicit: the engine's KV slots are shared by the rows of a batch and may hold holes
(slots a row rejected), trees need "see your ancestors only", and static caches have unwritten
slots. HF builds masks from slot indices, which is wrong for all three (and sliding windows
measured over slot indices drift from token distances once a row has holes). Here a key is
visible when it is a valid slot of the row, an ancestor (or self) among the new tokens, not in
the future, and, for sliding-window layers, within the window measured in *token positions*
(HF's rule ``kv > q - window`` over a left-padded contiguous layout is the same thing).

Every cache layer is a full-length layer (hfspec never uses HF's sliding caches, which cannot
roll back); sliding layers get their own mask instead. transformers models take either one 4-D
mask or, when layers differ, a dict ``{layer_type: mask}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs

from hfspec.exceptions import ConfigurationError

SUPPORTED_ATTENTION = ("eager", "sdpa")
_SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


def layer_windows(model: PreTrainedModel) -> dict[str, int | None]:
    """{layer type: sliding window or None} for the model's attention layers."""
    config = model.config.get_text_config(decoder=True)
    types, kwargs = get_layer_types_and_kwargs(config)
    windows: dict[str, int | None] = {}
    for kind, extra in zip(types, kwargs, strict=True):
        if kind == "dummy":
            continue
        if kind not in _SUPPORTED_LAYER_TYPES:
            raise ConfigurationError(
                f"{type(model).__name__} has '{kind}' layers; hfspec supports full and sliding-window attention "
                f"({', '.join(_SUPPORTED_LAYER_TYPES)}). Drop assistant_strategy for this model."
            )
        windows[kind] = extra.get("sliding_window") if kind == "sliding_attention" else None
    return windows


def check_attention(model: PreTrainedModel) -> None:
    """Raise before any model work when the attention implementation ignores explicit masks."""
    impl = model.config._attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise ConfigurationError(
            f"{type(model).__name__} uses attn_implementation={impl!r}; hfspec needs one that honours explicit "
            f"4-D masks ({' or '.join(SUPPORTED_ATTENTION)}). Load it with attn_implementation=\"sdpa\"."
        )
    layer_windows(model)


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def grouped_query_sdpa() -> Iterator[None]:
    """Let SDPA read grouped-query keys as they are cached, around one hfspec forward.

    With an explicit mask, transformers 5.23 feeds SDPA keys repeated to every query head
    (``repeat_kv``): a copy of the whole KV view per layer per forward, which dominated the
    attention cost (0.5B, 24 layers, one query over 2,057 keys: 36 ms eager, 18 ms compiled,
    against 9 ms with ``enable_gqa``). Its own switch, this environment variable, makes it pass
    ``enable_gqa=True`` instead; the value is restored afterwards. Process-wide while set: do not
    run other transformers forwards concurrently in other threads.
    """
    old = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[_FORCE_GQA]
        else:
            os.environ[_FORCE_GQA] = old


def visibility(
    key_valid: torch.Tensor,
    key_pos: torch.Tensor,
    new_start: int,
    new_visible: torch.Tensor,
    query_pos: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """(B, Q, K) bool: which key slot each new token may attend to.

    key_valid (B, K) bool: slot holds a token of the row (new slots included, unwritten excluded)
    key_pos (B, K) long: token position held by each slot
    new_start: the Q new tokens occupy key slots [new_start, new_start + Q)
    new_visible (B, Q, Q) bool: new token i may see new token j (causal chain or tree ancestry)
    query_pos (B, Q) long: position of each new token
    """
    b, q, _ = new_visible.shape
    k = key_valid.shape[1]
    device = key_valid.device
    old = (torch.arange(k, device=device) < new_start)[None, None, :]  # (1, 1, K)
    seen = key_valid[:, None, :] & old & (key_pos[:, None, :] <= query_pos[:, :, None])
    new = torch.zeros((b, q, k), dtype=torch.bool, device=device)
    new[:, :, new_start : new_start + q] = new_visible
    out = seen | new
    if window is not None:
        out &= key_pos[:, None, :] > query_pos[:, :, None] - window  # a token always sees itself
    return out


def as_attention_mask(visible: torch.Tensor, model: PreTrainedModel, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) mask in the form the model's attention takes: bool for sdpa, additive otherwise."""
    visible = visible[:, None]
    if model.config._attn_implementation == "sdpa":
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, torch.finfo(dtype).min)


def model_masks(
    model: PreTrainedModel,
    windows: dict[str, int | None],
    key_valid: torch.Tensor,
    key_pos: torch.Tensor,
    new_start: int,
    new_visible: torch.Tensor,
    query_pos: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The ``attention_mask`` argument for one forward: a tensor, or a dict when layer types differ."""
    masks = {
        kind: as_attention_mask(visibility(key_valid, key_pos, new_start, new_visible, query_pos, w), model, dtype)
        for kind, w in windows.items()
    }
    if len(masks) == 1:
        return next(iter(masks.values()))
    return masks
