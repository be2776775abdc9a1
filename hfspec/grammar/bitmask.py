"""Apply xgrammar's packed token bitmask to logits, touching only the tokens that are allowed.

Why: xgrammar's CPU ``apply_token_bitmask_inplace`` writes -inf one disallowed id at a time. On
Qwen's 151,936-wide vocabulary a position where the grammar allows a handful of tokens (between
JSON keys, after a value: most positions with ``any_whitespace=False``) costs it hundreds of µs
(``benchmarks/results/mask-apply.json``), against a few µs to fill the mask. For such a row ``apply_bitmask_inplace`` saves the few allowed logits,
fills the row with -inf (one memset-speed pass) and writes them back. Rows where many words hold
an allowed id go to xgrammar's kernel, which is already fast when few ids are disallowed (it skips
all-allowed words: about 40 µs inside a JSON string, where 147k of 152k ids are allowed).
Measured: ``benchmarks/mask_apply.py``. A path setting only the disallowed ids was measured too
and was slower than the kernel at every density, so there is none.

The work is in numpy on views of the same memory (torch's per-op overhead is larger than a sparse
row's whole cost), writing -inf as its bit pattern through an integer view, so bfloat16 and float16
rows are handled like float32 ones.

Layout (xgrammar's): bit j of int32 word i of a row is token 32 * i + j, 1 = allowed. As in
xgrammar, only ids below min(logits width, 32 * words) are masked; wider logits keep their tail.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

# -inf's bit pattern in an integer view of the same width, per dtype xgrammar's CPU kernel takes
_NEG_INF_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.float32: (torch.int32, -0x800000),  # 0xFF800000
    torch.bfloat16: (torch.int16, -0x80),  # 0xFF80
    torch.float16: (torch.int16, -0x400),  # 0xFC00
}
# A row takes the allowed-ids path when at most this share of its 32-id words hold an allowed id.
# Measured on 151,936 ids (random words, one torch thread): at 5 % the path costs 116 µs against
# the kernel's 715, at 20 % 344 against 665, at 30 % 503 against 626; 25 % leaves a margin.
SPARSE_SHARE = 0.25


def apply_bitmask_inplace(logits: torch.Tensor, bitmask: torch.Tensor, *, sparse_share: float = SPARSE_SHARE) -> None:
    """Set ``logits[r, t] = -inf`` where bit t of row r of ``bitmask`` is 0: exactly what
    ``xgrammar.apply_token_bitmask_inplace(logits, bitmask)`` does, for (rows, V) CPU logits and
    (rows, W) int32 bitmasks, except that it never writes past a row (``tail_allowed``). Anything
    else (other shapes, devices, dtypes) goes to xgrammar as is."""
    import xgrammar as xgr  # the grammar extra; imported here like the rest of hfspec.grammar

    if not _sparse_ok(logits, bitmask):
        if logits.device.type == "cpu" and logits.dim() == 2 and bitmask.dim() == 2 and bitmask.dtype == torch.int32:
            vocab = min(logits.shape[1], 32 * bitmask.shape[1])
            xgr.apply_token_bitmask_inplace(logits, tail_allowed(bitmask, vocab), vocab_size=vocab)
        else:
            xgr.apply_token_bitmask_inplace(logits, bitmask)
        return
    vocab = min(logits.shape[1], 32 * bitmask.shape[1])
    whole, bits = vocab // 32, bitmask.numpy()
    limit = int(sparse_share * whole)
    # per row, not count_nonzero(axis=1): that one is a reduction, the 1-D count a popcount loop
    sparse = [np.count_nonzero(words[:whole]) <= limit for words in bits]
    if any(sparse):
        int_dtype, neg_inf = _NEG_INF_BITS[logits.dtype]
        out = logits.view(int_dtype).numpy()
        for row, take in enumerate(sparse):
            if take:
                keep_allowed(out[row], bits[row], vocab, neg_inf)
    left = [row for row, take in enumerate(sparse) if not take]
    if left:
        indices = left if len(left) < len(sparse) else None
        xgr.apply_token_bitmask_inplace(logits, tail_allowed(bitmask, vocab), vocab_size=vocab, indices=indices)


def tail_allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """``bitmask`` with the bits past ``vocab`` in its partial last word set (a copy; as is when
    ``vocab`` is a multiple of 32). xgrammar 0.2.8's CPU kernel writes -inf at a 0 bit past
    ``vocab`` when every id of that word below ``vocab`` is allowed: past the row's end, into the
    next row's first ids (or past the buffer). Bits past ``vocab`` mean nothing, so setting them
    changes no result and leaves the kernel nothing to write out of bounds."""
    whole, tail = divmod(vocab, 32)
    if not tail or whole >= bitmask.shape[1]:
        return bitmask
    fixed = bitmask.clone()
    fixed[:, whole] |= _as_int32(~((1 << tail) - 1))
    return fixed


def keep_allowed(out: np.ndarray, words: np.ndarray, vocab: int, neg_inf: int) -> None:
    """Mask one row in place: save its allowed ids, fill ``out[:vocab]`` with ``neg_inf``, restore
    them (``out``: the row's logits as integers; ``words``: its bitmask row)."""
    whole, tail = divmod(vocab, 32)
    head = words[:whole]
    keep = bit_ids(head, np.nonzero(head != 0)[0])
    if tail:
        tail_ids = np.arange(whole * 32, vocab)
        keep = np.concatenate([keep, tail_ids[((int(words[whole]) >> (tail_ids - whole * 32)) & 1) == 1]])
    kept = out[keep]
    out[:vocab].fill(neg_inf)
    out[keep] = kept


def bit_ids(words: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Token ids of the 1 bits of ``words[which]`` (pure)."""
    bits = np.unpackbits(words[which].view(np.uint8), bitorder="little")  # bit j of word k at 32k + j
    position = np.flatnonzero(bits)
    return which[position >> 5] * 32 + (position & 31)


def _as_int32(value: int) -> int:
    """The signed 32-bit integer with the low 32 bits of ``value``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _sparse_ok(logits: torch.Tensor, bitmask: torch.Tensor) -> bool:
    return (
        sys.byteorder == "little"  # bit_ids reads words byte by byte
        and logits.dim() == 2
        and bitmask.dim() == 2
        and logits.shape[0] == bitmask.shape[0]
        and logits.shape[1] > 0
        and bitmask.shape[1] > 0
        and logits.device.type == "cpu"
        and bitmask.device.type == "cpu"
        and bitmask.dtype == torch.int32
        and logits.dtype in _NEG_INF_BITS
        and logits.is_contiguous()
        and bitmask.is_contiguous()
        and not logits.requires_grad
    )
