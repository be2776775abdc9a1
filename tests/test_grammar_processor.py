"""GrammarLogitsProcessor: state derived from input_ids with rollback, so it survives HF assisted
decoding, prompt lookup, beam search and reuse, where xgrammar's own HF processor asserts."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from hfspec.exceptions import GrammarError
from hfspec.grammar import EBNF, GrammarLogitsProcessor, JSONSchema, Regex
from hfspec.grammar.compile import compile_spec
from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model

xgr = pytest.importorskip("xgrammar")

EOS, PAD, V = 1, 0, 64

SPECS = {
    "regex": Regex(r'\{"a": [0-9]{1,3}\}'),
    "ebnf": EBNF('root ::= "[" item (", " item){0,3} "]"\nitem ::= "true" | "false" | [0-9]'),
    "schema": JSONSchema(
        {
            "type": "object",
            "properties": {"a": {"type": "boolean"}, "x": {"type": "string", "enum": ["ab", "fe"]}},
            "required": ["a", "x"],
            "additionalProperties": False,
        },
        any_whitespace=False,
    ),
}


@pytest.fixture(scope="module")
def tok():
    return tiny_json_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=V, seed=0)


@pytest.fixture(scope="module")
def draft(model):
    return perturbed_copy(model, 0.05, seed=1)


def prompt(tok, text='{"a": 12}') -> torch.Tensor:
    return torch.tensor([tok(text)["input_ids"]])


def generate(model, ids, proc, **kwargs):
    kwargs.setdefault("max_new_tokens", 40)
    kwargs.setdefault("do_sample", False)
    mask = kwargs.pop("attention_mask", None)
    with torch.no_grad():
        return model.generate(
            ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]), **kwargs
        )


def check_row(tok, spec, generated: list[int]) -> None:
    """The row ends with EOS (then only padding: beam search pads with EOS) and its text is a
    sentence of the grammar."""
    assert EOS in generated, f"no EOS in {generated}"
    end = generated.index(EOS)
    assert all(t in (PAD, EOS) for t in generated[end + 1 :]), generated
    text = tok.decode(generated[:end])
    assert spec.matches(text), (text, generated)


# --------------------------------------------------------------------------- plain generate
@pytest.mark.parametrize("name", sorted(SPECS))
def test_greedy_outputs_match_grammar(model, tok, name):
    spec = SPECS[name]
    ids = prompt(tok)
    out = generate(model, ids, GrammarLogitsProcessor(spec, tok))
    check_row(tok, spec, out[0, ids.shape[1] :].tolist())


def test_unconstrained_output_does_not_match(model, tok):
    """Sanity: the tiny model does not write these grammars by itself, so the mask is what works."""
    ids = prompt(tok)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    assert not any(spec.matches(text) for spec in SPECS.values())


def left_padded_batch(tok, texts):
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("name", ["regex", "schema"])
def test_batch_with_left_padding(model, tok, name):
    spec = SPECS[name]
    ids, mask = left_padded_batch(tok, ['{"a": 1', "[1, 2]", 'x y z "b": true'])
    assert len(set(mask.sum(1).tolist())) == 3  # three prompt lengths
    out = generate(model, ids, GrammarLogitsProcessor(spec, tok), attention_mask=mask)
    for row in out[:, ids.shape[1] :].tolist():
        check_row(tok, spec, row)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["ebnf", "schema"])
def test_sampling_outputs_match_grammar(model, tok, name, seed):
    spec = SPECS[name]
    ids, mask = left_padded_batch(tok, ['{"a": 1', "[1, 2]", "abc"])
    torch.manual_seed(seed)
    out = generate(model, ids, GrammarLogitsProcessor(spec, tok), attention_mask=mask, do_sample=True)
    for row in out[:, ids.shape[1] :].tolist():
        check_row(tok, spec, row)


def test_beam_search_outputs_match_grammar(model, tok):
    """Beam search reorders rows every step; reordered rows fork the matcher they extend."""
    spec = SPECS["schema"]
    ids = prompt(tok)
    out = generate(model, ids, GrammarLogitsProcessor(spec, tok), num_beams=3, num_return_sequences=3)
    for row in out[:, ids.shape[1] :].tolist():
        check_row(tok, spec, row)


# --------------------------------------------------------------------------- HF assisted decoding
@pytest.mark.parametrize("name", sorted(SPECS))
def test_assisted_decoding_identical_to_plain(model, draft, tok, name):
    spec = SPECS[name]
    ids = prompt(tok)
    reference = generate(model, ids, GrammarLogitsProcessor(spec, tok))
    check_row(tok, spec, reference[0, ids.shape[1] :].tolist())

    fresh = GrammarLogitsProcessor(spec, tok)
    assert torch.equal(generate(model, ids, fresh, assistant_model=draft), reference)
    assert fresh.rolled_back_tokens > 0  # HF did re-call on shorter prefixes: rollback was exercised

    reused = GrammarLogitsProcessor(spec, tok)  # one instance across calls of both kinds
    for kwargs in ({"assistant_model": draft}, {}, {"assistant_model": draft}):
        assert torch.equal(generate(model, ids, reused, **kwargs), reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_assisted_sampling_outputs_match_grammar(model, draft, tok, seed):
    """Speculative sampling compares target and draft scores that both went through the mask."""
    spec = SPECS["schema"]
    ids = prompt(tok)
    torch.manual_seed(seed)
    out = generate(model, ids, GrammarLogitsProcessor(spec, tok), assistant_model=draft, do_sample=True)
    check_row(tok, spec, out[0, ids.shape[1] :].tolist())


def test_prompt_lookup_identical_to_plain(model, tok):
    spec = SPECS["schema"]
    ids = prompt(tok, '{"a": true, "x": "ab"} {"a": false, "x": "fe"} {"a": ')
    reference = generate(model, ids, GrammarLogitsProcessor(spec, tok))
    check_row(tok, spec, reference[0, ids.shape[1] :].tolist())
    proc = GrammarLogitsProcessor(spec, tok)
    assert torch.equal(generate(model, ids, proc, prompt_lookup_num_tokens=4), reference)
    assert torch.equal(generate(model, ids, proc, prompt_lookup_num_tokens=2), reference)


def test_xgrammar_contrib_processor_fails_under_assisted_decoding(model, draft, tok):
    """Documents the bug fixed here: xgrammar's HF processor accepts input_ids[-1] on every call
    (inside an assert), which HF's assisted decoding breaks by re-calling on shorter prefixes."""
    from xgrammar.contrib.hf import LogitsProcessor as XgrProcessor

    spec = SPECS["regex"]
    ids = prompt(tok)
    compiled = compile_spec(spec, tok, V)
    plain = generate(model, ids, XgrProcessor(compiled))  # fine without an assistant
    check_row(tok, spec, plain[0, ids.shape[1] :].tolist())
    with pytest.raises(AssertionError) as info:
        generate(model, ids, XgrProcessor(compiled), assistant_model=draft)
    assert str(info.traceback[-1].path).endswith("hf.py")  # its `assert matcher.accept_token(...)`
    reused = XgrProcessor(compiled)  # and it cannot serve a second generate() either
    generate(model, ids, reused)
    with pytest.raises(AssertionError):
        generate(model, ids, reused)


class AppendOnly(GrammarLogitsProcessor):
    """Planted bug: feeds the matcher only ids past what it accepted, never rolls back."""

    def _sync(self, row, tokens, width):
        for token in tokens[row.accepted :]:
            if row.matcher.is_terminated() or not row.matcher.accept_token(token):
                break
            row.accepted += 1
        row.seen = tokens


def test_planted_append_only_bug_is_caught(model, draft, tok):
    spec = SPECS["schema"]
    ids = prompt(tok)
    reference = generate(model, ids, GrammarLogitsProcessor(spec, tok))
    buggy = generate(model, ids, AppendOnly(spec, tok), assistant_model=draft)
    assert not torch.equal(buggy, reference)
    # and the same variant is harmless where HF never rolls back: the test isolates rollback
    assert torch.equal(generate(model, ids, AppendOnly(spec, tok)), reference)


# --------------------------------------------------------------------------- state derivation
def reference_allowed(compiled, tokens: list[int]) -> torch.Tensor:
    """Allowed tokens after feeding ``tokens`` to a fresh matcher (stop/pad only once finished or dead)."""
    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[EOS])
    for token in tokens:
        if matcher.is_terminated() or not matcher.accept_token(token):
            break
    else:
        if not matcher.is_terminated():
            bitmask = xgr.allocate_token_bitmask(1, V)
            matcher.fill_next_token_bitmask(bitmask, 0)
            scores = torch.zeros(1, V)
            xgr.apply_token_bitmask_inplace(scores, bitmask)
            return torch.isfinite(scores[0])
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[EOS, PAD]] = True
    return allowed


def call(proc, rows: list[list[int]], dtype=torch.float32) -> torch.Tensor:
    scores = torch.randn(len(rows), V, dtype=dtype)
    before = scores.clone()
    out = proc(torch.tensor(rows), scores)
    assert out.dtype == dtype and torch.equal(scores, before)  # input untouched, dtype kept
    assert torch.equal(out[torch.isfinite(out)], scores[torch.isfinite(out)])
    return torch.isfinite(out)


def test_state_follows_input_ids(tok):
    spec = SPECS["schema"]
    compiled = compile_spec(spec, tok, V)
    good = tok('{"a": true, "x": "fe"}')["input_ids"] + [EOS, PAD, PAD]
    other = tok('{"a": false, "x": "ab"}')["input_ids"] + [EOS]
    p0, p1 = [5, 7, 21], [9, 9, 12]
    proc = GrammarLogitsProcessor(spec, tok)
    steps = [  # generated ids of rows 0 and 1 at each call
        ([], []),  # prompt only
        (good[:1], other[:1]),  # grow
        (good[:2], other[:2]),
        (good[:6], other[:6]),  # jump
        (other[:7], good[:7]),  # rows switch (beam reorder)
        (good[:3], other[:5]),  # shrink (rollback), by different amounts per row
        (good[:3] + [21], other[:6]),  # diverge from what was accepted
        (good[:4] + [EOS], other[:4]),  # EOS where the grammar cannot end: row 0 dead
        (good[:4] + [EOS, 21, 21], other[:5]),  # still dead, more ids after
        (good[:8], other[:8]),  # rolled back to a grammatical prefix: alive again
        (good, other[:9]),  # row 0 terminated then padded
        (good[:5], other[:3]),  # and back from termination
        (good[:-2], other),  # both finished
    ]
    for row0, row1 in steps:
        n = max(len(row0), len(row1))
        if len(row0) != len(row1):  # rows of a tensor have one length: pad the shorter with junk
            row0 = row0 + [3] * (n - len(row0))
            row1 = row1 + [3] * (n - len(row1))
        rolled_back = proc.rolled_back_tokens
        got = call(proc, [p0 + row0, p1 + row1])
        if row0 == other[:7]:  # reordered rows fork the matcher they extend instead of replaying
            assert proc.rolled_back_tokens == rolled_back
        for i, row in enumerate((row0, row1)):
            assert torch.equal(got[i], reference_allowed(compiled, row)), (i, row)
    assert proc.rolled_back_tokens > 0


def test_generations_are_keyed_by_prompt_and_batch(tok):
    spec = SPECS["regex"]
    compiled = compile_spec(spec, tok, V)
    out = tok('{"a": 12}')["input_ids"]
    proc = GrammarLogitsProcessor(spec, tok, max_states=2)
    a, b = [5, 7], [9, 9, 9]

    def check(rows, expected_generated, row=0):
        assert torch.equal(call(proc, rows)[row], reference_allowed(compiled, expected_generated))

    check([a], [])
    check([a + out[:3]], out[:3])
    check([b], [])  # another prompt: a new generation
    check([b + out[:2]], out[:2])
    check([a + out[:4]], out[:4])  # back to a: still known
    check([a[:1]], [])  # shorter than prompt a: a new generation with prompt [5]; evicts b (LRU of 2)
    check([a + out[:1]], out[:1])  # prompts [5, 7] and [5] both fit: the longest wins
    check([a[:1] + out[:2]], out[:2])  # continues the generation whose prompt is [5]
    check([b + out[:2]], [])  # b was evicted: this call starts a generation with its whole input as prompt
    check([a + out[:2], a + out[:2]], [], row=1)  # another batch size never continues a generation
    proc.reset()
    check([a + out[:2]], [])


def test_float64_scores_are_masked_exactly(tok):
    spec = SPECS["ebnf"]
    proc = GrammarLogitsProcessor(spec, tok)
    ids = [[5, 7], [9, 9]]
    for gen in ([], [5], [5, 17], [5, 17, 44]):
        rows = [r + gen for r in ids]
        assert torch.equal(call(proc, rows, torch.float64), call(proc, rows, torch.float32))
        assert torch.equal(call(proc, rows, torch.bfloat16), call(proc, rows, torch.float32))


def test_processor_called_by_hfspec_style_ride_along_rows(tok):
    """Rows outside the group being processed arrive truncated or padded with junk: they may go
    dead, but the group's rows get their exact masks and nothing raises."""
    spec = SPECS["regex"]
    compiled = compile_spec(spec, tok, V)
    out = tok('{"a": 12}')["input_ids"]
    proc = GrammarLogitsProcessor(spec, tok)
    p = [5, 7]
    call(proc, [p, p])
    for n0, n1 in [(2, 4), (4, 2), (3, 5), (5, 3)]:
        for group_len in (n0, n1):
            rows = [out[:n0] + [PAD] * 9, out[:n1] + [PAD] * 9]
            got = call(proc, [p + r[:group_len] for r in rows])
            for i, n in enumerate((n0, n1)):
                if n == group_len:
                    assert torch.equal(got[i], reference_allowed(compiled, out[:n]))


# --------------------------------------------------------------------------- errors
def test_errors_are_grammar_errors(tok):
    spec = SPECS["regex"]
    with pytest.raises(GrammarError, match="tokenizer"):
        GrammarLogitsProcessor(spec)
    with pytest.raises(GrammarError, match="grammar spec"):
        GrammarLogitsProcessor(r"\d+", tok)
    proc = GrammarLogitsProcessor(spec, tok)
    with pytest.raises(GrammarError, match="40 columns but the tokenizer has 53"):
        proc(torch.tensor([[5]]), torch.zeros(1, 40))
    with pytest.raises(GrammarError, match="vocab_size=64 but the scores have 80"):
        GrammarLogitsProcessor(spec, tok, vocab_size=V)(torch.tensor([[5]]), torch.zeros(1, 80))
    with pytest.raises(GrammarError, match="same batch size"):
        proc(torch.tensor([[5], [6]]), torch.zeros(1, V))
    with pytest.raises(GrammarError, match="outside the vocabulary"):
        GrammarLogitsProcessor(spec, tok, eos_token_id=99)(torch.tensor([[5]]), torch.zeros(1, V))
    # a wider lm head than the tokenizer is fine (extra ids are never allowed)
    wide = GrammarLogitsProcessor(spec, tok)(torch.tensor([[5]]), torch.zeros(1, 80))
    assert torch.isinf(wide[0, 53:]).all()
