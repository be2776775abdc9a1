"""Property tests of JSON Schema grammars: valid values are accepted, accepted texts are valid.

hypothesis builds a random simple schema (objects of string / integer / number / boolean /
array-of-integer / enum / nested-object properties, random ``required`` subsets and bounds) together
with a value that satisfies it. Then:

* ``json.dumps(value)`` and ``json.dumps(value, indent=2)`` must match the grammar;
* every one-character mutation (delete, insert, replace) of those texts that the grammar accepts
  must parse and be valid for ``jsonschema``: for schemas without unenforced keywords (checked
  here too), the mask accepting a text implies the text is valid.

Strings are drawn from ASCII letters, digits and space only: JSON escapes and non-ASCII text have
their own probes in test_grammar_unenforced.py and would make the mutations mostly break escapes.
Numbers are drawn so that ``json.dumps`` writes them without an exponent when bounds are set:
xgrammar's bounded-number grammar refuses exponent notation (``5e0`` for ``minimum: 5``), a
measured over-restriction, not a soundness problem. Runs derandomized (a few seconds).
"""

from __future__ import annotations

import json
import string

import pytest

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hfspec.grammar.specs import JSONSchema  # noqa: E402
from hfspec.grammar.unenforced import unenforced_keywords  # noqa: E402

TEXT = string.ascii_letters + string.digits + " "
NAMES = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6)
# characters a mutation inserts: JSON structure, literals' letters, digits, sign/exponent, space
MUTATION_CHARS = '{}[]",:0123456789-+.eEtrufalsn aZ\n'
SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def bounds(draw, values):
    """Optional (low, high) bounds drawn from ``values``, low <= high."""
    low = draw(st.none() | values)
    high = draw(st.none() | values)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return low, high


@st.composite
def field(draw, depth: int):
    """A (schema, value) pair for one property."""
    kinds = ["string", "integer", "number", "boolean", "int-array", "enum"] + (
        ["object"] if depth < 2 else []
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        low, high = draw(bounds(st.integers(0, 6)))
        schema = {"type": "string"} | ({"minLength": low} if low is not None else {})
        schema |= {"maxLength": high} if high is not None else {}
        return schema, draw(
            st.text(alphabet=TEXT, min_size=low or 0, max_size=high if high is not None else 8)
        )
    if kind == "integer":
        low, high = draw(bounds(st.integers(-1000, 1000)))
        schema = {"type": "integer"} | ({"minimum": low} if low is not None else {})
        schema |= {"maximum": high} if high is not None else {}
        return schema, draw(st.integers(min_value=low, max_value=high))
    if kind == "number":
        low, high = draw(bounds(st.integers(-100, 100)))
        exclusive = draw(st.booleans())
        lo_key, hi_key = ("exclusiveMinimum", "exclusiveMaximum") if exclusive else ("minimum", "maximum")
        schema = {"type": "number"} | ({lo_key: low} if low is not None else {})
        schema |= {hi_key: high} if high is not None else {}
        if exclusive and low is not None and low == high:
            schema.pop(hi_key)
            high = None
        # four decimals, so json.dumps never writes an exponent
        lo = None if low is None else low * 10000 + (1 if exclusive else 0)
        hi = None if high is None else high * 10000 - (1 if exclusive else 0)
        lo = lo if lo is not None else (hi if hi is not None else 0) - 10**6
        hi = hi if hi is not None else lo + 2 * 10**6
        return schema, draw(st.integers(min_value=lo, max_value=hi).map(lambda n: n / 10000))
    if kind == "boolean":
        return {"type": "boolean"}, draw(st.booleans())
    if kind == "int-array":
        low, high = draw(bounds(st.integers(0, 4)))
        schema = {"type": "array", "items": {"type": "integer"}}
        schema |= ({"minItems": low} if low is not None else {}) | (
            {"maxItems": high} if high is not None else {}
        )
        items = st.lists(st.integers(-50, 50), min_size=low or 0, max_size=high if high is not None else 5)
        return schema, draw(items)
    if kind == "enum":
        options = draw(st.lists(st.one_of(st.text(alphabet=TEXT, max_size=5), st.integers(-9, 99), st.none(),
                                          st.booleans()), min_size=1, max_size=4, unique_by=json.dumps))  # fmt: skip
        return {"enum": options}, draw(st.sampled_from(options))
    return draw(obj(depth + 1))


@st.composite
def obj(draw, depth: int = 0):
    """An object schema with 0-4 properties and a value that declares keys in schema order."""
    names = draw(st.lists(NAMES, max_size=4, unique=True))
    fields = {name: draw(field(depth)) for name in names}
    required = [n for n in names if draw(st.booleans())]
    schema = {"type": "object", "properties": {n: s for n, (s, _) in fields.items()}, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    value = {n: v for n, (_, v) in fields.items() if n in required or draw(st.booleans())}
    return schema, value


def is_valid(schema: dict, text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def mutations(text: str) -> list[str]:
    """Every one-character delete, and a deterministic spread of inserts and replacements."""
    out = [text[:i] + text[i + 1 :] for i in range(len(text))]
    for i in range(len(text) + 1):
        c = MUTATION_CHARS[(i * 7) % len(MUTATION_CHARS)]
        out.append(text[:i] + c + text[i:])
        if i < len(text):
            out.append(text[:i] + MUTATION_CHARS[(i * 11 + 3) % len(MUTATION_CHARS)] + text[i + 1 :])
    return out


@SETTINGS
@given(obj())
def test_valid_values_are_accepted_compact_and_indented(case):
    schema, value = case
    assert unenforced_keywords(schema) == []  # simple schemas use only enforced keywords
    assert jsonschema.Draft202012Validator(schema).is_valid(value)
    spec = JSONSchema(schema)
    for text in (json.dumps(value), json.dumps(value, indent=2)):
        assert spec.matches(text), text


@SETTINGS
@given(obj())
def test_accepted_mutations_are_valid(case):
    import xgrammar as xgr

    schema, value = case
    spec = JSONSchema(schema)
    grammar = spec.compile_with(xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1))  # once per example
    for text in {m for layout in (None, 2) for m in mutations(json.dumps(value, indent=layout))}:
        matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)
        if matcher.accept_string(text) and matcher.is_completed():
            assert is_valid(schema, text), f"the mask accepted an invalid text: {text!r}"


def test_mutation_check_catches_an_unenforced_keyword():
    """The property above can fail: with uniqueItems (unenforced) a duplicating mutation gets through."""
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    leaked = [
        t for t in mutations(json.dumps([1, 12])) if JSONSchema(schema).matches(t) and not is_valid(schema, t)
    ]
    assert "[1, 1]" in leaked
