"""CRANE mode: free text, then ``start`` + a grammar-constrained answer + ``end``, then only EOS.

The reference is independent of hfspec's matcher code: plain HF ``model.generate`` with a
logits processor that re-parses every row from scratch with a fresh xgrammar matcher, compiled
by its own ``GrammarCompiler`` from the structural tag written out literally here. Greedy outputs
with and without speculation must be token-identical to it; completed outputs must split into
free text + start + a conforming answer + end; planted bugs (the end delimiter dropped, the
``triggered_tags`` forms that forbid free text or make it optional) must fail the same checks.

The tiny JSON tokenizer has no ``<``, so the tests use START = "}\\n" (which the seed-3 tiny model
writes in three of eight free-text rows, by itself or after other text) and END = "z" (which the
enum answer "yz" contains: the split must still find the answer).
"""

from __future__ import annotations

import json
import random
import warnings
from collections import OrderedDict

import pytest
import torch
import xgrammar as xgr
from transformers import LogitsProcessorList

import hfspec
from hfspec.grammar import compile as grammar_compile
from hfspec.grammar.compile import compile_spec
from hfspec.grammar.crane import Crane
from hfspec.testing import FromScratchMask, perturbed_copy, tiny_json_tokenizer, tiny_model

VOCAB, EOS, PAD = 64, 1, 0
START, END = "}\n", "z"
MAX_NEW = 40
PROMPTS = torch.randint(3, 53, (8, 6), generator=torch.Generator().manual_seed(0))
SCHEMA = {"type": "object", "properties": {"b": {"enum": ["x", "yz"]}, "c": {"type": "boolean"}}, "required": ["b", "c"]}


@pytest.fixture(scope="module")
def tok():
    return tiny_json_tokenizer()


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", vocab_size=VOCAB, logit_scale=4.0, seed=3)


@pytest.fixture(scope="module")
def draft(target):
    return perturbed_copy(target, 0.3)


@pytest.fixture(scope="module")
def close_draft(target):
    """Agrees with the target on most tokens, not all (the tiny model's weights are ~0.02): drafts
    are accepted and rejected on both sides of START, so rollback crosses the trigger."""
    return perturbed_copy(target, 0.005)


def answers(tok) -> dict[str, hfspec.grammar.GrammarSpec]:
    """Bounded answer languages, so that a random tiny model finishes them within MAX_NEW."""
    return {
        "regex": hfspec.Regex(r"[0-9]{1,3}"),
        "schema": hfspec.JSONSchema(SCHEMA, any_whitespace=False),
        "ebnf": hfspec.EBNF('root ::= "[" item ("," item)? "]"\nitem ::= "null" | [0-9] | "\\"" [a-f] "\\""'),
    }


def crane(tok, kind: str) -> Crane:
    return Crane(answers(tok)[kind], start=START, end=END, tokenizer=tok)


def own_compile(tok, structural_tag: dict):
    """Compiled by a fresh xgrammar compiler: none of hfspec's caches or compile code."""
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB)
    return xgr.GrammarCompiler(info, max_threads=1).compile_structural_tag(json.dumps(structural_tag))


def literal_tag(content: dict) -> dict:
    """The structure Crane must compile to, written out: free text without START, then one tag."""
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": [
        {"type": "any_text", "excludes": [START]},
        {"type": "tag", "begin": START, "content": content, "end": END},
    ]}}


_references: dict[str, list] = {}


def reference(target, tok, structural_tag: dict) -> list:
    key = json.dumps(structural_tag)
    if key not in _references:
        compiled = own_compile(tok, structural_tag)
        out = target.generate(
            input_ids=PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=MAX_NEW, do_sample=False,
            logits_processor=LogitsProcessorList(
                [FromScratchMask(compiled, PROMPTS.shape[1], vocab_size=VOCAB, stop_token_ids=[EOS])]
            ),
        )
        _references[key] = out.tolist()
    return _references[key]


def run(target, spec, strategy=None, jump_forward=True, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hfspec.IncompleteOutputWarning)
        return target.generate(
            PROMPTS, attention_mask=torch.ones_like(PROMPTS), custom_generate=hfspec.generate, grammar=spec,
            assistant_strategy=strategy, jump_forward=jump_forward, max_new_tokens=MAX_NEW, do_sample=False,
            on_incomplete="flag", **kwargs,
        )


def strategies(draft, close_draft) -> dict:
    return {
        "none": (None, True),
        "none/no-jump": (None, False),
        "draft": (hfspec.DraftModel(draft, num_tokens=3), True),
        "draft/no-jump": (hfspec.DraftModel(draft, num_tokens=3), False),
        "close-draft": (hfspec.DraftModel(close_draft, num_tokens=3), True),
        "lookup": (hfspec.PromptLookup(num_tokens=3, min_ngram=1), True),
        "lookup/no-jump": (hfspec.PromptLookup(num_tokens=3, min_ngram=1), False),
    }


def texts_of(tok, sequences) -> list[str]:
    rows = []
    for row in sequences[:, PROMPTS.shape[1]:].tolist():
        row = row[: row.index(EOS)] if EOS in row else row
        rows.append(tok.decode(row))
    return rows


def conformance_problems(spec: Crane, tok, out) -> tuple[int, list[str]]:
    """(completed rows, problems): every completed row must be free text + START + answer + END."""
    problems, done = [], 0
    for text, complete, valid in zip(texts_of(tok, out.sequences), out.grammar_complete.tolist(),
                                     out.grammar_valid.tolist(), strict=True):
        if not complete:
            continue
        done += 1
        try:
            free, answer = spec.split(text)
            spec.parse(text)
        except hfspec.GrammarValidationError as err:
            problems.append(f"{text!r}: {err}")
            continue
        if START in free or free + START + answer + END != text or not valid:
            problems.append(f"{text!r}: free={free!r} answer={answer!r} valid={valid}")
    return done, problems


# ----------------------------------------------------------------------------- structure


def test_compiles_to_free_text_then_one_tagged_answer(tok):
    assert crane(tok, "regex").structural_tag == literal_tag({"type": "regex", "pattern": r"[0-9]{1,3}"})
    assert crane(tok, "ebnf").answer_format() == {"type": "grammar", "grammar": answers(tok)["ebnf"].grammar}
    any_ws = Crane(hfspec.JSONSchema(SCHEMA), start=START, end=END)
    assert any_ws.answer_format() == {"type": "json_schema", "json_schema": SCHEMA, "any_order": False}
    # compact separators are not expressible as json_schema content: xgrammar's own EBNF conversion
    assert crane(tok, "schema").answer_format()["type"] == "grammar"
    assert compile_spec(crane(tok, "regex"), tok, VOCAB) is compile_spec(crane(tok, "regex"), tok, VOCAB)
    assert crane(tok, "regex").cache_key() != Crane(hfspec.Regex(r"[0-9]{1,3}"), start=START, end="y").cache_key()


LANGUAGE_CASES = {
    "schema/any-ws": (hfspec.JSONSchema(SCHEMA), ['{"b": "x", "c": true}', '{ "b" : "yz" ,"c":false }',
                                                  '{"c": true, "b": "x"}', '{"b": "x"}', '{"b": "x", "c": true, "d": 1}']),
    "schema/compact": (hfspec.JSONSchema(SCHEMA, any_whitespace=False),
                       ['{"b": "x", "c": true}', '{"b":"x","c":true}', '{ "b": "x", "c": true}']),
    "schema/indent": (hfspec.JSONSchema(SCHEMA, any_whitespace=False, indent=2),
                      ['{\n  "b": "x",\n  "c": true\n}', '{"b": "x", "c": true}']),
    "schema/any-order": (hfspec.JSONSchema(SCHEMA, any_order=True), ['{"c": true, "b": "x"}', '{"b": "x", "c": true}', '{"b": 1, "c": true}',
                                                                    '{"c": true}', '{"c": true, "c": true}']),
    "json": (hfspec.JSON(), ['{"a": [1, null]}', "[]", "1", '"s"', " {}", "{}\n", "{"]),
    "regex": (hfspec.Regex(r"[0-9]{1,3}(\.[0-9]+)?"), ["7", "123", "1234", "1.5", "1.", ""]),
    "ebnf/named-root": (hfspec.EBNF('answer ::= "a" b*\nb ::= "b"', root="answer"), ["a", "abb", "b", "ba"]),
    "lark": (hfspec.Lark('start: "a"+ "b"'), ["ab", "aaab", "b", "a"]),
}


@pytest.mark.parametrize("case", sorted(LANGUAGE_CASES))
def test_answer_language_is_exactly_the_spec_alone(case):
    """Inside Crane the answer accepts exactly what the spec accepts alone (whitespace, strictness,
    property order, root rule, Lark conversion): no setting of the answer spec is lost."""
    answer, candidates = LANGUAGE_CASES[case]
    spec = Crane(answer, start=START, end=END)
    for text in candidates:
        for free in ("", "reasoning: 7 ", "}"):
            assert spec.matches(free + START + text + END) == answer.matches(text), (free, text)
    assert sum(answer.matches(t) for t in candidates) not in (0, len(candidates))  # the cases discriminate


def test_text_level_semantics():
    spec = Crane(hfspec.Regex(r"[a-z]+"), start="<a>", end="</a>")
    assert spec.matches("free text, even </a> or <a <a>abc</a>")
    assert spec.matches("<a>abc</a>")  # empty free text is fine
    assert not spec.matches("free text only")  # the answer is mandatory
    assert not spec.matches("x <a>abc</a> more")  # nothing after end
    assert not spec.matches("x <a>abc</a><a>d</a>")  # one answer
    assert not spec.matches("x <a>ab1</a>")  # the answer is enforced
    # the first start opens the answer; the final end closes it (answers may contain either)
    assert spec.split("think <a>b<a</a>") == ("think ", "b<a")
    assert Crane(hfspec.Regex(r"[a-z<>/]+"), start="<a>", end="</a>").answer_text("x<a>p</a>q</a>") == "p</a>q"
    assert spec.parse("so <a>abc</a>") == "abc"
    with pytest.raises(hfspec.GrammarValidationError, match="no start delimiter"):
        spec.answer_text("abc</a>")
    with pytest.raises(hfspec.GrammarValidationError, match="end delimiter"):
        spec.answer_text("<a>abc")
    with pytest.raises(hfspec.GrammarValidationError, match="does not match"):
        spec.parse("<a>ab1</a>")


def test_json_schema_answer_parses_and_validates_unenforced_keywords(tok):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9, "not": {"const": 6}}},
              "required": ["n"]}
    spec = Crane(hfspec.JSONSchema(schema), start=START, end=END)
    assert spec.parse('I think 3.}\n{"n": 3}z') == {"n": 3}
    assert spec.validation_errors('so}\n{"n": 3}z') == []
    assert any("should not be valid" in e for e in spec.validation_errors('so}\n{"n": 6}z'))  # 'not': unenforced
    assert spec.validation_errors('no delimiters {"n": 3}') and spec.validation_errors('}\n{"n": 3}')
    with pytest.raises(hfspec.GrammarValidationError, match="schema"):
        spec.parse('}\n{"n": 6}z')
    # unenforced="error" is honoured inside Crane, even after the 'validate' twin was compiled and cached
    compile_spec(spec, tok, VOCAB)
    strict = Crane(hfspec.JSONSchema(schema, unenforced="error"), start=START, end=END)
    with pytest.raises(hfspec.UnenforcedSchemaError, match="'not'"):
        compile_spec(strict, tok, VOCAB)


# ----------------------------------------------------------------------------- the free text, at the matcher


def free_text_problems(compiled, tok, trials: int = 60) -> list[str]:
    """Before the trigger: any token sequence whose text lacks START is accepted, EOS is refused
    (the answer is still due), and every regular token that does not complete START is allowed.
    After START + answer + END: only EOS."""
    rng = random.Random(0)
    regular = [i for i in range(3, len(tok))]  # not pad/eos/unk, not the ids past the tokenizer
    problems: list[str] = []
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)

    def allowed() -> set[int]:
        matcher.fill_next_token_bitmask(bitmask, 0)
        return {t for t in range(VOCAB) if (int(bitmask[0, t // 32]) >> (t % 32)) & 1}

    for _ in range(trials):
        seq: list[int] = []
        length = rng.randint(0, 30)
        while len(seq) < length:
            token = rng.choice(regular)
            if START not in tok.decode(seq + [token]):
                seq.append(token)
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[EOS])
        if not all(matcher.accept_token(t) for t in seq):
            problems.append(f"free text {tok.decode(seq)!r} refused")
            continue
        mask = allowed()
        if EOS in mask:
            problems.append(f"EOS allowed after free text {tok.decode(seq)!r}: the answer is optional")
        blocked = [t for t in regular if t not in mask and START not in tok.decode(seq + [t])]
        if blocked:
            problems.append(f"after {tok.decode(seq)!r} tokens {tok.convert_ids_to_tokens(blocked)} refused")
        # then the answer: enforced, and after END only EOS
        if not matcher.accept_string(START) or matcher.accept_string("x"):
            problems.append("the answer is not enforced after START")
            continue
        if not matcher.accept_string("42" + END):
            problems.append("a conforming answer + END refused")
            continue
        if allowed() != {EOS}:
            problems.append(f"after END tokens other than EOS are allowed: {sorted(allowed())[:8]}")
    return problems


def test_free_text_is_unconstrained_and_only_eos_follows_the_answer(tok):
    spec = crane(tok, "regex")
    assert free_text_problems(compile_spec(spec, tok, VOCAB), tok) == []
    assert free_text_problems(own_compile(tok, literal_tag({"type": "regex", "pattern": r"[0-9]{1,3}"})), tok) == []


@pytest.mark.parametrize("at_least_one", [True, False])
def test_planted_triggered_tags_forms_fail_the_free_text_check(tok, at_least_one):
    """xgrammar 0.2.8's ``triggered_tags`` with ``stop_after_first``: ``at_least_one=True`` forbids
    any text before the first tag; ``False`` lets free text alone end the output. Neither is CRANE."""
    tag = {"type": "tag", "begin": START, "content": {"type": "regex", "pattern": r"[0-9]{1,3}"}, "end": END}
    fmt = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [START], "tags": [tag],
                                                "at_least_one": at_least_one, "stop_after_first": True}}
    problems = free_text_problems(own_compile(tok, fmt), tok, trials=20)
    expected = "refused" if at_least_one else "answer is optional"
    assert any(expected in p for p in problems), problems[:3]


# ----------------------------------------------------------------------------- generate()


@pytest.mark.parametrize("kind", ["regex", "schema", "ebnf"])
def test_greedy_identical_to_masked_plain_generate_with_every_strategy(target, draft, close_draft, tok, kind):
    spec = crane(tok, kind)
    expected = reference(target, tok, spec.structural_tag)
    for name, (strategy, jump_forward) in strategies(draft, close_draft).items():
        stats = hfspec.SpecStats()
        out = run(target, spec, strategy, jump_forward, speculation_stats=stats)
        assert out.tolist() == expected, (name, texts_of(tok, out))
        if name == "close-draft":  # speculation really ran: some drafts accepted, some rejected
            assert 0 < stats.accepted < stats.drafted, stats


@pytest.mark.parametrize("kind", ["regex", "schema", "ebnf"])
def test_completed_outputs_are_free_text_start_answer_end(target, draft, tok, kind):
    spec = crane(tok, kind)
    out = run(target, spec, hfspec.DraftModel(draft, num_tokens=3), return_dict_in_generate=True)
    done, problems = conformance_problems(spec, tok, out)
    assert problems == []
    assert done >= 3, texts_of(tok, out.sequences)  # free text of several lengths, START alone or after text
    texts = texts_of(tok, out.sequences)
    completed = [text for text, ok in zip(texts, out.grammar_complete.tolist(), strict=True) if ok]
    frees = {spec.split(text)[0] for text in completed}
    assert len(frees) >= 3 and any(len(f) >= 5 for f in frees), frees
    if kind == "schema":  # "yz" holds END: a first-END split would cut the answer short
        values = [spec.parse(text) for text in completed]
        assert all(v["b"] in ("x", "yz") for v in values) and any(v["b"] == "yz" for v in values), values


def test_reasoning_budget_forces_the_answer(target, draft, close_draft, tok):
    """max_reasoning_chars=6: at most 6 characters of free text, then START is the only way on, so
    every row answers (unbounded, 5 of 8 rows never write START). Same tokens with every strategy."""
    spec = Crane(answers(tok)["regex"], start=START, end=END, tokenizer=tok, max_reasoning_chars=6)
    tag = literal_tag({"type": "regex", "pattern": r"[0-9]{1,3}"})
    tag["format"]["elements"][0]["max_chars"] = 6
    assert spec.structural_tag == tag
    expected = reference(target, tok, tag)
    for name, (strategy, jump_forward) in strategies(draft, close_draft).items():
        out = run(target, spec, strategy, jump_forward, return_dict_in_generate=True)
        assert out.sequences.tolist() == expected, (name, texts_of(tok, out.sequences))
    done, problems = conformance_problems(spec, tok, out)
    assert problems == [] and done == PROMPTS.shape[0]
    frees = [spec.split(t)[0] for t in texts_of(tok, out.sequences)]
    assert max(map(len, frees)) == 6, frees
    forced = run(target, Crane(answers(tok)["regex"], start=START, end=END, tokenizer=tok, max_reasoning_chars=0))
    assert all(t.startswith(START) for t in texts_of(tok, forced)), texts_of(tok, forced)
    assert spec.matches("abcdef" + START + "1" + END) and not spec.matches("abcdefx" + START + "1" + END)
    with pytest.raises(hfspec.GrammarValidationError, match="max_reasoning_chars"):
        spec.parse("abcdefx" + START + "1" + END)


def test_token_budget_of_xgrammar_is_history_dependent(tok):
    """Why the budget is in characters: with xgrammar 0.2.8's ``any_text.max_tokens`` the mask after
    the same tokens differs with and without masks filled on the way (fails when xgrammar fixes it:
    then a token budget can be offered)."""
    tag = literal_tag({"type": "regex", "pattern": r"[0-9]{1,3}"})
    tag["format"]["elements"][0]["max_tokens"] = 3
    compiled = own_compile(tok, tag)
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)
    tokens = tok.convert_tokens_to_ids(['",', '",', '",', "}"])
    masks = []
    for fill_on_the_way in (False, True):
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[EOS])
        for token in tokens:
            if fill_on_the_way:
                matcher.fill_next_token_bitmask(bitmask, 0)
            assert matcher.accept_token(token)
        matcher.fill_next_token_bitmask(bitmask, 0)
        masks.append(bitmask.clone())
    assert not torch.equal(masks[0], masks[1])


def test_planted_missing_end_delimiter_fails_conformance(target, tok, monkeypatch):
    """A Crane whose compiled tag forgets ``end``: outputs still complete, but they do not conform."""
    def no_end(self):
        tag = {"type": "tag", "begin": self.start, "content": self.answer_format(), "end": ""}
        return {"type": "structural_tag", "format": {"type": "sequence", "elements": [
            {"type": "any_text", "excludes": [self.start]}, tag]}}

    monkeypatch.setattr(Crane, "structural_tag", property(no_end))
    monkeypatch.setattr(grammar_compile, "_compiled", OrderedDict())  # no cached correct compilation
    spec = crane(tok, "regex")
    out = run(target, spec, return_dict_in_generate=True)
    done, problems = conformance_problems(spec, tok, out)
    assert done >= 3 and len(problems) == done, problems


# ----------------------------------------------------------------------------- construction errors


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Crane({"type": "object"}), "must be an hfspec grammar spec"),
        (lambda: Crane("[0-9]+"), "must be an hfspec grammar spec"),
        (lambda: Crane(None), "got NoneType"),
        (lambda: Crane(Crane(hfspec.JSON())), "cannot nest"),
        (lambda: Crane(hfspec.StructuralTag.tool_calls({"f": {}})), "JSONSchema, JSON, Regex, EBNF or Lark"),
        (lambda: Crane(hfspec.JSON(), start=""), "start=.*non-empty"),
        (lambda: Crane(hfspec.JSON(), end=""), "end=.*non-empty"),
        (lambda: Crane(hfspec.JSON(), start=3), "start=.*non-empty"),
        (lambda: Crane(hfspec.JSON(), start="|", end="|"), "different start and end"),
        (lambda: Crane(hfspec.JSON(), max_reasoning_chars=-1), "max_reasoning_chars"),
        (lambda: Crane(hfspec.JSON(), max_reasoning_chars=True), "max_reasoning_chars"),
        (lambda: Crane(hfspec.JSON(), max_reasoning_chars=2.0), "max_reasoning_chars"),
    ],
)
def test_bad_construction_raises_grammar_error(make, message):
    with pytest.raises(hfspec.GrammarError, match=message):
        make()


def test_tokenizer_comes_from_the_answer_and_must_agree(tok):
    assert Crane(hfspec.JSON(tokenizer=tok)).tokenizer is tok
    assert Crane(hfspec.JSON(), tokenizer=tok).tokenizer is tok
    from hfspec.testing import tiny_tokenizer

    with pytest.raises(hfspec.GrammarError, match="different tokenizers"):
        Crane(hfspec.JSON(tokenizer=tok), tokenizer=tiny_tokenizer(64))


@pytest.mark.parametrize("method", ["asap", "exact"])
def test_crane_under_grammar_aligned_sampling(target, draft, tok, method):
    """GrammarAligned(Crane(...)): every returned row is free text + START + answer + END, with and
    without speculation (the aligned law itself is tested in tests/test_aligned.py). The exact method
    gets a small language (no reasoning, one digit): under a random tiny model free text is so
    unlikely to end in an answer that exact rejection would need millions of attempts."""
    if method == "asap":
        spec = Crane(answers(tok)["regex"], start=START, end=END, tokenizer=tok, max_reasoning_chars=4)
        prompts = PROMPTS[:4]
    else:
        spec = Crane(hfspec.Regex("[0-9]"), start=START, end=END, tokenizer=tok, max_reasoning_chars=0)
        prompts = PROMPTS[:1].repeat(4, 1)
    aligned = hfspec.GrammarAligned(spec, method=method, max_rounds=400)
    for strategy in (None, hfspec.DraftModel(draft, num_tokens=3)):
        torch.manual_seed(0)
        out = target.generate(
            prompts, attention_mask=torch.ones_like(prompts), custom_generate=hfspec.generate,
            grammar=aligned, assistant_strategy=strategy, max_new_tokens=MAX_NEW, do_sample=True,
            top_k=0, top_p=1.0, return_dict_in_generate=True,
        )
        done, problems = conformance_problems(spec, tok, out)
        assert problems == [] and done == 4
    assert aligned.stats.samples == 8
