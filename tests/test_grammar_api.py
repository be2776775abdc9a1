"""grammar= through every entry point, and clear errors before any model work."""

from __future__ import annotations

import pydantic
import pytest
import torch
from transformers import pipeline

import hfspec
from hfspec.grammar.compile import compile_spec
from hfspec.testing import tiny_json_tokenizer, tiny_model, tiny_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"enum": ["x", "yz"]}},
    "required": ["a", "b"],
}


class Item(pydantic.BaseModel):
    a: int
    b: str


@pytest.fixture(scope="module")
def tok():
    return tiny_json_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)


@pytest.fixture()
def forwards(model):
    """Counts target forward calls, to prove errors come before any model work."""
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


PROMPT = torch.tensor([[5, 9, 12, 3, 7]])


def test_custom_generate_enable_and_pipeline_agree(model, tok):
    spec_with_tok = hfspec.JSONSchema(SCHEMA, any_whitespace=False, tokenizer=tok)
    spec_plain = hfspec.JSONSchema(SCHEMA, any_whitespace=False)
    a = model.generate(PROMPT, custom_generate=hfspec.generate, grammar=spec_with_tok, max_new_tokens=30,
                       do_sample=False)
    hfspec.enable()
    b = model.generate(PROMPT, grammar=spec_plain, tokenizer=tok, max_new_tokens=30, do_sample=False)
    c = model.generate(PROMPT, grammar=spec_plain, tokenizer=tok, assistant_strategy=hfspec.PromptLookup(),
                       max_new_tokens=30, do_sample=False)
    assert a.tolist() == b.tolist() == c.tolist()
    text = tok.decode(a[0, PROMPT.shape[1]:], skip_special_tokens=True)
    assert spec_plain.parse(text)["b"] in ("x", "yz")
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    out = pipe("{ab", grammar=spec_with_tok, max_new_tokens=30, do_sample=False, return_full_text=False)
    assert spec_plain.matches(out[0]["generated_text"]), out


def test_pydantic_schema_parses_to_the_model():
    spec = hfspec.JSONSchema(Item)
    value = spec.parse('{"a": 3, "b": "x"}')
    assert isinstance(value, Item) and value.a == 3
    with pytest.raises(hfspec.GrammarValidationError, match="a"):
        spec.parse('{"a": "three", "b": "x"}')


def test_every_spec_kind_compiles_and_is_cached(tok):
    specs = [
        hfspec.JSON(),
        hfspec.JSONSchema(SCHEMA),
        hfspec.JSONSchema('{"type": "array", "items": {"type": "integer"}}'),
        hfspec.Regex(r"[a-f]+"),
        hfspec.EBNF('root ::= "a" "b"*'),
        hfspec.Lark('start: "a"+'),
        hfspec.StructuralTag.tool_calls({"f": {"type": "object", "properties": {"x": {"type": "integer"}}}}),
    ]
    for spec in specs:
        assert compile_spec(spec, tok, 64) is compile_spec(spec, tok, 64)
    # equal grammars share one compilation, a different property order does not
    assert compile_spec(hfspec.JSONSchema(SCHEMA), tok, 64) is compile_spec(hfspec.JSONSchema(dict(SCHEMA)), tok, 64)
    tool = specs[-1]
    assert tool.matches('Sure. <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    assert not tool.matches('<tool_call>{"name": "g", "arguments": {}}</tool_call>')


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tok: hfspec.JSONSchema({"type": 12}), "Invalid JSON Schema"),
        (lambda tok: hfspec.JSONSchema("{not json"), "not JSON"),
        (lambda tok: hfspec.JSONSchema(42), "expects a dict"),
        (lambda tok: hfspec.Regex(""), "non-empty"),
    ],
)
def test_bad_specs_fail_at_construction(tok, make, message):
    with pytest.raises(hfspec.GrammarError, match=message):
        make(tok)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(grammar=hfspec.Regex(r"[^\x00-\U0010FFFF]")), hfspec.GrammarError, "unsatisfiable"),
        (dict(grammar=hfspec.Regex("(?!a)a")), hfspec.GrammarError, "Lookahead"),
        (dict(grammar=hfspec.EBNF("root ::= foo")), hfspec.GrammarError, "not defined"),
        (dict(grammar=hfspec.JSONSchema(SCHEMA), num_beams=2), hfspec.ConfigurationError, "beam search"),
        (dict(grammar=hfspec.JSONSchema(SCHEMA), on_incomplete="ignore"), hfspec.ConfigurationError, "on_incomplete"),
        (dict(grammar={"type": "object"}), hfspec.GrammarError, "grammar spec"),
        (dict(assistant_strategy=hfspec.JumpForward()), hfspec.ConfigurationError, "needs grammar"),
        (dict(grammar=hfspec.JSONSchema(SCHEMA), jump_forward="no"), hfspec.ConfigurationError, "jump_forward="),
        (dict(grammar=hfspec.JSONSchema(SCHEMA), jump_forward=0), hfspec.ConfigurationError, "True or False"),
        (dict(jump_forward=None), hfspec.ConfigurationError, "jump_forward="),  # checked without grammar too
        (dict(grammar=hfspec.JSONSchema(SCHEMA), jump_forward=False, assistant_strategy=hfspec.JumpForward()),
         hfspec.ConfigurationError, "contradicts"),
    ],
)
def test_bad_calls_fail_before_the_model_runs(model, tok, forwards, kwargs, error, message):
    spec = kwargs.get("grammar")
    if isinstance(spec, hfspec.grammar.GrammarSpec):
        kwargs["grammar"] = type(spec)(**{**spec.__dict__, "tokenizer": tok})
    with pytest.raises(error, match=message):
        model.generate(PROMPT, custom_generate=hfspec.generate, max_new_tokens=5, **kwargs)
    assert forwards == []


def test_tokenizer_errors(model, tok, forwards):
    with pytest.raises(hfspec.GrammarError, match="tokenizer=tok"):
        model.generate(PROMPT, custom_generate=hfspec.generate, grammar=hfspec.JSON(), max_new_tokens=5)
    hfspec.enable()
    other = tiny_tokenizer(64)
    with pytest.raises(hfspec.GrammarError, match="different tokenizer"):
        model.generate(PROMPT, grammar=hfspec.JSON(tokenizer=other), tokenizer=tok, max_new_tokens=5)
    wide = tiny_tokenizer(80)
    with pytest.raises(hfspec.GrammarError, match="80 tokens but the model's vocabulary is 64"):
        model.generate(PROMPT, grammar=hfspec.JSON(), tokenizer=wide, max_new_tokens=5)
    assert forwards == []


def test_unenforced_keywords_error_mode(model, tok, forwards):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "not": {"const": 6}}}, "required": ["a"]}
    spec = hfspec.JSONSchema(schema, unenforced="error", tokenizer=tok)
    with pytest.raises(hfspec.UnenforcedSchemaError, match="'not'"):
        model.generate(PROMPT, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=5)
    assert forwards == []


def test_validate_mode_never_passes_a_violation_as_valid(model, tok):
    """An unenforced keyword the output violates is reported like an incomplete output."""
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99,
                                                     "not": {"const": 97}}}, "required": ["a"]}
    spec = hfspec.JSONSchema(schema, any_whitespace=False, tokenizer=tok)
    with pytest.warns(hfspec.IncompleteOutputWarning, match="should not be valid"):
        out = model.generate(PROMPT, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=30,
                             do_sample=False, on_incomplete="flag", return_dict_in_generate=True)
    text = tok.decode(out.sequences[0, PROMPT.shape[1]:], skip_special_tokens=True)
    assert text == '{"a": 97}'  # what this tiny model writes: the mask allowed it, validation catches it
    assert out.grammar_complete.tolist() == [True] and out.grammar_valid.tolist() == [False]
    with pytest.raises(hfspec.IncompleteOutputError, match="should not be valid"):
        model.generate(PROMPT, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=30, do_sample=False)


def test_unsupported_schema_error_names_the_feature(model, tok, forwards):
    """xgrammar's own message is a C++ check; the error adds the keyword whose removal compiles."""
    schema = {"type": "object", "patternProperties": {"^[a-z]{1,255}$": {"type": "string", "maxLength": 10}}}
    with pytest.raises(hfspec.GrammarError, match=r"could not be compiled.*\[feature: maxLength"):
        model.generate(PROMPT, custom_generate=hfspec.generate, grammar=hfspec.JSONSchema(schema, tokenizer=tok),
                       max_new_tokens=5)
    assert forwards == []


def test_jump_forward_keyword_through_enable_and_pipeline(model, tok, forwards):
    """enable() takes jump_forward= like custom_generate does; both spellings give the same tokens."""
    spec = hfspec.JSONSchema(SCHEMA, any_whitespace=False, tokenizer=tok)
    kwargs = dict(grammar=spec, max_new_tokens=30, do_sample=False)
    a = model.generate(PROMPT, custom_generate=hfspec.generate, jump_forward=False, **kwargs)
    calls_plain = len(forwards)
    hfspec.enable()
    try:
        b = model.generate(PROMPT, jump_forward=False, **kwargs)
        c = model.generate(PROMPT, **kwargs)
        forwards.clear()
        with pytest.raises(hfspec.ConfigurationError, match="jump_forward="):
            model.generate(PROMPT, jump_forward="off", max_new_tokens=3)  # no grammar, still checked
        with pytest.raises(hfspec.ConfigurationError, match="contradicts"):
            model.generate(PROMPT, jump_forward=False, assistant_strategy=hfspec.JumpForward(), **kwargs)
        assert forwards == []
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        out = pipe("{ab", grammar=spec, jump_forward=False, max_new_tokens=30, do_sample=False, return_full_text=False)
        assert spec.matches(out[0]["generated_text"]), out
    finally:
        hfspec.disable()
    assert a.tolist() == b.tolist() == c.tolist()
    assert calls_plain == a.shape[1] - PROMPT.shape[1]  # jump_forward=False: one forward per token


def test_with_jump_forward_wraps_once():
    from hfspec.proposers.base import NoDrafts
    from hfspec.proposers.jump_forward import JumpForward, with_jump_forward

    draft = tiny_model("llama", vocab_size=64, seed=4)
    lookup = hfspec.PromptLookup()
    assert with_jump_forward(lookup, True).inner is lookup
    assert isinstance(with_jump_forward(lookup, True), JumpForward)
    assert with_jump_forward(NoDrafts(), True).inner is None
    assert with_jump_forward(lookup, False) is lookup
    explicit = hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=3), max_tokens=5)
    assert with_jump_forward(explicit, True) is explicit  # never double-wrapped
    with pytest.raises(hfspec.ConfigurationError, match="contradicts"):
        with_jump_forward(explicit, False)
    for bad in (1, None, "yes"):
        with pytest.raises(hfspec.ConfigurationError, match="jump_forward"):
            with_jump_forward(lookup, bad)
    target = tiny_model("llama", vocab_size=64, seed=3)
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="eager", capacity=64)
    wrapped = with_jump_forward(plan, True)
    assert isinstance(wrapped, hfspec.CompiledPlan) and wrapped.target is plan.target and wrapped.draft is plan.draft
    assert isinstance(wrapped.strategy, JumpForward) and wrapped.strategy.inner is plan.strategy
    assert wrapped.node_budget == plan.node_budget == 3
    assert with_jump_forward(wrapped, True) is wrapped
    with pytest.raises(hfspec.ConfigurationError, match="contradicts"):
        with_jump_forward(wrapped, False)
    assert with_jump_forward(plan, False) is plan
