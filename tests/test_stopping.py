"""hfspec.stopping.stop_token_ids: every form eos_token_id arrives in, and the grammar paths using it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import hfspec
from hfspec.grammar import call as grammar_call
from hfspec.grammar.processor import GrammarLogitsProcessor
from hfspec.stopping import stop_token_ids
from hfspec.testing import tiny_json_tokenizer


class Tok:
    """The few tokenizer attributes stop_token_ids reads."""

    def __init__(self, eos=None, vocab=None, unk=None):
        self.eos_token_id, self.unk_token_id, self.vocab = eos, unk, vocab or {}

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, self.unk_token_id)


@pytest.mark.parametrize(
    "eos, expected",
    [
        (7, [7]),
        ([7, 3], [7, 3]),
        ((7, 3), [7, 3]),
        ([7, None, 3], [7, 3]),
        (torch.tensor(7), [7]),
        (torch.tensor([7, 3]), [7, 3]),
        (torch.tensor([[7], [3]]), [7, 3]),
        ([3, 7, 3, 7], [3, 7]),
        (torch.tensor([3, 3]), [3]),
        ([], []),
        (torch.tensor([], dtype=torch.long), []),
    ],
)
def test_every_form_of_eos_token_id(eos, expected):
    assert stop_token_ids(eos) == expected
    assert stop_token_ids(eos, Tok(eos=99)) == expected  # given ids win over the tokenizer's


def test_none_falls_back_to_the_tokenizer():
    assert stop_token_ids(None) == []
    assert stop_token_ids(None, Tok(eos=5)) == [5]
    assert stop_token_ids(None, Tok(eos=None)) == []
    assert stop_token_ids(None, object()) == []  # no eos_token_id attribute at all


def test_chat_end_tokens_are_added_when_the_vocabulary_has_them():
    tok = Tok(eos=5, vocab={"<|im_end|>": 9, "<|endoftext|>": 5}, unk=0)
    assert stop_token_ids([5], tok, chat_end_tokens=("<|im_end|>", "<|endoftext|>", "<|eot|>")) == [5, 9]
    assert stop_token_ids(None, None, chat_end_tokens=("<|im_end|>",)) == []


def test_grammar_call_accepts_a_multi_element_tensor_eos():
    """Regression: int(e) of a 1-d tensor raised before the tensor branch was reached."""
    tok = tiny_json_tokenizer()
    spec = hfspec.Regex(r"[0-9]+", tokenizer=tok)
    for eos, expected in ((torch.tensor([1, 2]), [1, 2]), (torch.tensor(1), [1]), ([1, None], [1]), (None, [1])):
        config = SimpleNamespace(eos_token_id=eos, num_beams=1)
        call = grammar_call.prepare(spec, tok, 64, config, 2, "error")
        assert call.stop_token_ids == expected == call.rows.stop_token_ids, eos
        assert tok.eos_token_id == 1  # so None falls back to [1]
    with pytest.raises(hfspec.GrammarError, match="end-of-sequence"):
        grammar_call.prepare(spec, tok, 64, SimpleNamespace(eos_token_id=[], num_beams=1), 1, "error")


def test_processor_uses_the_same_rule():
    tok = tiny_json_tokenizer()
    spec = hfspec.Regex(r"[0-9]+", tokenizer=tok)
    assert GrammarLogitsProcessor(spec, tok).stop_token_ids == [tok.eos_token_id]
    assert GrammarLogitsProcessor(spec, tok, eos_token_id=torch.tensor([1, 2, 2])).stop_token_ids == [1, 2]
    with pytest.raises(hfspec.GrammarError, match="names none"):
        GrammarLogitsProcessor(spec, tok, eos_token_id=[])
