"""The n-gram matcher: longest suffix n-gram; the previous copy's continuation, else the earliest."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hfspec.proposers.prompt_lookup import find_continuation


def t(*xs):
    return torch.tensor(xs)


def cont(seq, max_ngram, min_ngram, k, prefer=None):
    tokens, _ = find_continuation(seq, max_ngram, min_ngram, k, prefer)
    return tokens.tolist()


def test_prefers_longest_ngram_over_short_match():
    # suffix "1 2 3": the 3-gram occurs at the start (followed by 7 8); "3" alone recurs later (followed by 9)
    seq = t(1, 2, 3, 7, 8, 5, 3, 9, 4, 1, 2, 3)
    assert cont(seq, 3, 1, 2) == [7, 8]


def test_earliest_occurrence_by_default():
    seq = t(4, 5, 1, 4, 5, 2, 4, 5)
    assert cont(seq, 2, 1, 1) == [1]
    tokens, source = find_continuation(seq, 2, 1, 1)
    assert source == 2


def test_follows_the_previous_copy_when_it_still_matches():
    seq = t(4, 5, 1, 4, 5, 2, 4, 5)
    assert cont(seq, 2, 1, 1, prefer=5) == [2]  # the copy that was running continues at index 5
    assert cont(seq, 2, 1, 1, prefer=6) == [1]  # a stale pointer (no match ending there) is ignored


def test_min_ngram_rejects_one_token_coincidences():
    seq = t(4, 6, 7, 8, 9, 4)
    assert cont(seq, 3, 1, 3) == [6, 7, 8]
    assert cont(seq, 3, 2, 3) == []
    assert find_continuation(seq, 3, 2, 3)[1] is None


def test_no_match_and_short_sequences():
    assert cont(t(1, 2, 3), 3, 1, 4) == []
    assert cont(t(1), 3, 1, 4) == []
    assert cont(t(2, 2), 3, 1, 4) == [2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=40),
    st.integers(1, 4),
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(0, 45)),
)
def test_continuation_is_a_real_copy(tokens, max_ngram, num_tokens, prefer):
    """Whatever is proposed follows an earlier occurrence of the current suffix, verbatim."""
    seq = torch.tensor(tokens)
    found, source = find_continuation(seq, max_ngram, 1, num_tokens, prefer)
    out = found.tolist()
    assert len(out) <= num_tokens
    if not out:
        assert tokens[-1] not in tokens[:-1]  # even a 1-gram match would have produced a draft
        return
    assert tokens[source : source + len(out)] == out
    assert any(
        tokens[source - n : source] == tokens[-n:] for n in range(1, max_ngram + 1) if source - n >= 0
    )
