"""hfspec.grammar.bitmask.apply_bitmask_inplace gives xgrammar's result, bit for bit.

Reference: ``xgrammar.apply_token_bitmask_inplace``. One defect of it is avoided rather than copied:
xgrammar 0.2.8's CPU kernel writes -inf one id past a row's end when the row's partial last word
allows every id below the width and has a 0 bit past it (``test_xgrammar_writes_past_the_row``).
Where that happens the reference is xgrammar applied to a copy padded past the width (its own
documented semantics: ids at or past the width are never touched).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

xgr = pytest.importorskip("xgrammar")

from hfspec.grammar.bitmask import apply_bitmask_inplace, tail_allowed  # noqa: E402

INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def leaks(bitmask: torch.Tensor, width: int) -> bool:
    """Whether xgrammar's kernel would write past a row of this width (module docstring)."""
    vocab = min(width, 32 * bitmask.shape[1])
    whole, tail = divmod(vocab, 32)
    if not tail:
        return False
    low = (1 << tail) - 1
    words = [w & 0xFFFFFFFF for w in bitmask[:, whole].tolist()]
    return any(w & low == low and w != 0xFFFFFFFF for w in words)


def reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    out = logits.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xgrammar warns when the bitmask is narrower than the logits
        if not leaks(bitmask, logits.shape[1]):
            xgr.apply_token_bitmask_inplace(out, bitmask)
            return out
        rows, width = logits.shape
        padded = torch.zeros((rows, max(width, 32 * bitmask.shape[1])), dtype=logits.dtype)
        padded[:, :width] = logits
        xgr.apply_token_bitmask_inplace(padded, bitmask, vocab_size=min(width, 32 * bitmask.shape[1]))
        return padded[:, :width].clone()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = INT_VIEW[a.dtype]
    return torch.equal(a.view(view), b.view(view))


@st.composite
def word_row(draw, words: int):
    """One bitmask row: random words, or mostly allowed / mostly disallowed with a few random
    words, or a trap tail (every id allowed but the bits past the width)."""
    kind = draw(st.sampled_from(["random", "mostly-allowed", "mostly-disallowed", "uniform"]))
    word = st.integers(-(2**31), 2**31 - 1)
    if kind == "random":
        return draw(st.lists(word, min_size=words, max_size=words))
    if kind == "uniform":
        return [draw(st.sampled_from([0, -1]))] * words
    base = -1 if kind == "mostly-allowed" else 0
    row = [base] * words
    for index in draw(st.lists(st.integers(0, words - 1), max_size=4)):
        row[index] = draw(word | st.sampled_from([int32(1 << draw(st.integers(0, 31))), int32(~1)]))
    return row


@st.composite
def case(draw):
    rows = draw(st.integers(1, 4))
    width = draw(st.integers(1, 230))
    needed = (width + 31) // 32
    # the bitmask covers exactly the width, less (logits wider than 32 * words) or more
    words = draw(st.sampled_from([needed, max(1, needed - 1), needed + 1, needed + 2]))
    bits = [draw(word_row(words)) for _ in range(rows)]
    trap = draw(st.booleans())
    vocab = min(width, 32 * words)
    whole, tail = divmod(vocab, 32)
    if trap and tail:  # allow every id of the partial word below the width, none past it
        bits[0][whole] = int32((1 << tail) - 1)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    seed = draw(st.integers(0, 2**16))
    logits = torch.randn((rows, width), generator=torch.Generator().manual_seed(seed)).to(dtype)
    if draw(st.booleans()):  # special values survive untouched where allowed
        logits[0, 0], logits[-1, -1] = float("nan"), -0.0
    share = draw(st.sampled_from([0.0, 0.05, 0.25, 1.0]))  # (almost) all rows to the kernel ... none
    return logits, torch.tensor(bits, dtype=torch.int32), share


@settings(max_examples=400, deadline=None, derandomize=True)
@given(case())
def test_same_bits_as_xgrammar(args):
    logits, bitmask, share = args
    expected = reference(logits, bitmask)
    out = logits.clone()
    apply_bitmask_inplace(out, bitmask, sparse_share=share)
    assert same_bits(out, expected)


def test_xgrammar_writes_past_the_row_and_ours_does_not():
    """Why the reference pads: 40 ids, the last word allows ids 32..39 and nothing past them."""
    bitmask = torch.full((2, 2), -1, dtype=torch.int32)
    bitmask[0, 1] = 0xFF
    theirs, ours = torch.zeros(2, 40), torch.zeros(2, 40)
    xgr.apply_token_bitmask_inplace(theirs, bitmask)
    assert torch.isinf(theirs[1, 0])  # row 1 allows everything, yet id 0 became -inf
    for share in (0.0, 0.25):  # kernel path (given tail_allowed's bitmask) and sparse path
        ours.zero_()
        apply_bitmask_inplace(ours, bitmask, sparse_share=share)
        assert not torch.isinf(ours).any()
    fixed = tail_allowed(bitmask, 40)
    assert fixed[0, 1].item() == -1 and bitmask[0, 1].item() == 0xFF  # a copy
    assert tail_allowed(bitmask, 64) is bitmask


def test_other_layouts_go_to_xgrammar_unchanged():
    bitmask = torch.tensor([[0b1010, -1]], dtype=torch.int32)
    flat = torch.zeros(64)
    apply_bitmask_inplace(flat, bitmask[0])  # 1-D logits
    assert torch.isinf(flat[[0, 2]]).all() and not torch.isinf(flat[[1, 3, 40]]).any()
    strided = torch.zeros(64, 1).t()  # (1, 64), not contiguous
    strided_ref = strided.clone()
    xgr.apply_token_bitmask_inplace(strided_ref, bitmask)
    apply_bitmask_inplace(strided, bitmask)
    assert torch.equal(strided, strided_ref)
    with pytest.raises(ValueError):  # float64: xgrammar's own error, not a silent path
        apply_bitmask_inplace(torch.zeros(1, 64, dtype=torch.float64), bitmask)


def test_real_json_schema_masks_on_the_qwen_vocabulary():
    """Masks a real grammar makes (Qwen2.5 tokenizer, 151,936 ids), stacked as a verify step stacks them."""
    import hfspec
    from hfspec.grammar.compile import compile_spec
    from hfspec.testing import qwen_tokenizer

    tok = qwen_tokenizer()
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array",
              "items": {"type": "integer"}}, "ok": {"type": "boolean"}}, "required": ["name", "tags", "ok"]}
    compiled = compile_spec(hfspec.JSONSchema(schema, any_whitespace=False), tok, 151_936)
    ids = tok.encode('{"name": "Ada Lovelace, née Byron", "tags": [1, 22], "ok": true}', add_special_tokens=False)
    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[tok.eos_token_id])
    bitmask = xgr.allocate_token_bitmask(len(ids) + 1, 151_936)
    for row, token in enumerate([*ids, None]):
        matcher.fill_next_token_bitmask(bitmask, row)
        if token is not None:
            assert matcher.accept_token(token)
    logits = torch.randn(len(ids) + 1, 151_936, generator=torch.Generator().manual_seed(0))
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask)
    out = logits.clone()
    apply_bitmask_inplace(out, bitmask)
    assert torch.equal(out, expected)
    kept = (~torch.isinf(out)).sum(dim=1)
    assert kept.min() < 100 and kept.max() > 100_000  # rows for the allowed-ids path and for the kernel


# --------------------------------------------------------------------------- planted bugs
def _without_tail(out, words, vocab, neg_inf):
    """keep_allowed that forgets the partial last word: its allowed ids end up -inf."""
    import numpy as np

    from hfspec.grammar import bitmask as module

    whole = vocab // 32
    keep = module.bit_ids(words[:whole], np.nonzero(words[:whole] != 0)[0])
    kept = out[keep]
    out[:vocab].fill(neg_inf)
    out[keep] = kept


def _big_endian_bits(words, which):
    """bit_ids reading each byte's bits in the wrong order."""
    import numpy as np

    bits = np.unpackbits(words[which].view(np.uint8), bitorder="big")
    position = np.flatnonzero(bits)
    return which[position >> 5] * 32 + (position & 31)


@pytest.mark.parametrize("name, planted", [("keep_allowed", _without_tail), ("bit_ids", _big_endian_bits)])
def test_planted_bugs_are_caught_by_the_same_check(monkeypatch, name, planted):
    """The equality property above must find a counterexample for each broken variant."""
    from hypothesis import find

    from hfspec.grammar import bitmask as module

    monkeypatch.setattr(module, name, planted)

    def wrong(args) -> bool:
        logits, bits, share = args
        out = logits.clone()
        apply_bitmask_inplace(out, bits, sparse_share=share)
        return not same_bits(out, reference(logits, bits))

    logits, bits, _ = find(case(), wrong, settings=settings(max_examples=400, deadline=None, derandomize=True))
    assert logits.shape[0] == bits.shape[0]  # a real counterexample was found (find raises otherwise)
