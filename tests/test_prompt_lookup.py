"""The n-gram matcher: longest suffix n-gram, then longest continuation, then most recent."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hfspec.proposers.prompt_lookup import find_continuation


def t(*xs):
    return torch.tensor(xs)


def test_prefers_longest_ngram_over_recent_short_match():
    # suffix "1 2 3": the 3-gram occurs at the start (followed by 7 8); "3" alone recurs later (followed by 9)
    seq = t(1, 2, 3, 7, 8, 5, 3, 9, 4, 1, 2, 3)
    assert find_continuation(seq, max_ngram=3, min_ngram=1, num_tokens=2).tolist() == [7, 8]


def test_prefers_most_recent_among_equal_matches():
    seq = t(4, 5, 1, 4, 5, 2, 4, 5)
    assert find_continuation(seq, 2, 1, num_tokens=1).tolist() == [2]


def test_prefers_longer_available_continuation():
    # the most recent match of "4" is right before the suffix and can offer only 1 token
    seq = t(4, 6, 7, 8, 4, 4)
    assert find_continuation(seq, 1, 1, num_tokens=3).tolist() == [6, 7, 8]


def test_no_match_and_short_sequences():
    assert find_continuation(t(1, 2, 3), 3, 1, 4).numel() == 0
    assert find_continuation(t(1), 3, 1, 4).numel() == 0
    assert find_continuation(t(2, 2), 3, 1, 4).tolist() == [2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 4), st.integers(1, 6))
def test_continuation_is_a_real_copy(tokens, max_ngram, num_tokens):
    """Whatever is proposed follows an earlier occurrence of the current suffix, verbatim."""
    seq = torch.tensor(tokens)
    out = find_continuation(seq, max_ngram, 1, num_tokens).tolist()
    assert len(out) <= num_tokens
    if not out:
        assert seq[-1].item() not in tokens[:-1]  # even a 1-gram match would have produced a draft
        return
    n_len = len(seq)
    ok = False
    for n in range(1, max_ngram + 1):
        for start in range(0, n_len - n):
            if tokens[start : start + n] == tokens[-n:] and tokens[start + n : start + n + len(out)] == out:
                ok = True
    assert ok
