"""The token ids that end a row, from whatever form the caller holds them in.

Why one function: ``eos_token_id`` reaches hfspec as an int, a list or tuple of ints (possibly
holding None), or a 0-d / 1-d tensor (``generation_config._eos_token_tensor``, or a user's own
config), and it may be missing, in which case the tokenizer's eos is the stop token. Each caller
used to normalise this itself, and each got a different corner wrong (``int()`` of a multi-element
tensor raised). Every stop-token set in the library and its harness comes from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

EosTokenId = int | Sequence[int | None] | torch.Tensor | None


def stop_token_ids(
    eos_token_id: EosTokenId, tokenizer: Any = None, *, chat_end_tokens: Iterable[str] = ()
) -> list[int]:
    """The ids that end a row, without duplicates, in first-seen order.

    Args:
        eos_token_id: ``generation_config.eos_token_id`` or a user's ``eos_token_id=``: an int, a
            list/tuple of ints (None entries are skipped), a 0-d or 1-d tensor, or None.
        tokenizer: when ``eos_token_id`` is None, its ``eos_token_id`` is the stop token (an empty
            list or tensor given explicitly is kept as empty: the caller asked for no stop token).
            Also where ``chat_end_tokens`` are looked up.
        chat_end_tokens: token strings that also end a row when the tokenizer's vocabulary has
            them (e.g. ``"<|im_end|>"``: an instruct model ends its turn there even when the
            config lists only ``<|endoftext|>``). Strings it does not know are skipped.

    Returns an empty list when nothing names a stop token; callers that need one raise.
    """
    source = eos_token_id
    if source is None and tokenizer is not None:
        source = getattr(tokenizer, "eos_token_id", None)
    ids = _as_ids(source)
    for token in chat_end_tokens:
        if tokenizer is None:
            break
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
            ids.append(token_id)
    return list(dict.fromkeys(ids))


def _as_ids(value: EosTokenId) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def until_stop(ids: Sequence[int], stops: Iterable[int]) -> list[int]:
    """The tokens of ``ids`` before its first stop token (all of them if it has none)."""
    stops = set(stops)
    ids = list(ids)
    return next((ids[:i] for i, token in enumerate(ids) if token in stops), ids)
