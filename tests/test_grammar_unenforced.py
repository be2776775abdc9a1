"""Which JSON Schema keywords xgrammar's mask enforces, measured, and ``unenforced_keywords`` agreeing.

Every probe is a tiny schema plus an instance that violates one keyword only. For an unenforced
keyword the character-level matcher must accept the instance *and* ``unenforced_keywords`` must
flag the keyword; for an enforced one the matcher must reject it and nothing may be flagged. So
when an xgrammar upgrade changes what the mask enforces, a probe here fails and says which.
The bench test checks the invariant on all of JSONSchemaBench: every invalid instance the matcher
accepts comes from a flagged schema and is caught by ``JSONSchema.validation_errors``.
"""

from __future__ import annotations

import json

import pytest

xgr = pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from hfspec.exceptions import GrammarError, UnenforcedSchemaError  # noqa: E402
from hfspec.grammar.compile import check_enforceable  # noqa: E402
from hfspec.grammar.specs import JSONSchema  # noqa: E402
from hfspec.grammar.unenforced import ALWAYS, CONDITIONAL, explain, unenforced_keywords  # noqa: E402

INT = {"type": "integer"}
STR = {"type": "string"}
D2019 = "https://json-schema.org/draft/2019-09/schema"


def violates(schema: dict, value) -> bool:
    """jsonschema's verdict, asserting formats too (hfspec's validate mode does not, yet)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return not cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value)


def matches(schema: dict, text: str) -> bool:
    return JSONSchema(schema).matches(text)


# (id, schema, violating instance as text, [(path, keyword) that must be flagged])
UNENFORCED = [
    ("not", {"type": "integer", "not": {"const": 3}}, "3", [("", "not")]),
    ("not-false-schema", {"not": {}}, "1", [("", "not")]),
    ("if-then", {"type": "object", "properties": {"a": INT, "b": INT}, "if": {"required": ["a"]},
                 "then": {"required": ["b"]}}, '{"a": 1}', [("", "if"), ("", "then")]),
    ("if-else", {"type": "integer", "if": {"minimum": 0}, "then": {"maximum": 10}, "else": {"minimum": -10}},
     "-11", [("", "if"), ("", "else")]),
    ("contains", {"type": "array", "items": INT, "contains": {"const": 1}}, "[2]", [("", "contains")]),
    ("minContains", {"type": "array", "items": INT, "contains": {"const": 1}, "minContains": 2}, "[1, 2]",
     [("", "minContains")]),
    ("maxContains", {"type": "array", "items": INT, "contains": {"const": 1}, "maxContains": 1}, "[1, 1]",
     [("", "maxContains")]),
    ("dependentRequired", {"type": "object", "properties": {"a": INT, "b": INT}, "dependentRequired": {"a": ["b"]}},
     '{"a": 1}', [("", "dependentRequired")]),
    ("dependentSchemas", {"type": "object", "properties": {"a": INT, "b": INT},
                          "dependentSchemas": {"a": {"required": ["b"]}}}, '{"a": 1}', [("", "dependentSchemas")]),
    ("dependencies", {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                      "properties": {"a": INT, "b": INT}, "dependencies": {"a": ["b"]}}, '{"a": 1}',
     [("", "dependencies")]),
    ("$dynamicRef", {"$defs": {"i": {"$dynamicAnchor": "x", "type": "integer"}}, "$dynamicRef": "#x"}, '"a"',
     [("", "$dynamicRef")]),
    ("$recursiveRef", {"$schema": D2019, "$recursiveAnchor": True, "type": "object",
                       "properties": {"a": {"$recursiveRef": "#"}}}, '{"a": 1}', [("/properties/a", "$recursiveRef")]),
    ("uniqueItems", {"type": "array", "items": INT, "uniqueItems": True}, "[1, 1]", [("", "uniqueItems")]),
    ("uniqueItems-objects", {"type": "array", "items": {"type": "object", "properties": {"a": INT}},
                             "uniqueItems": True}, '[{"a": 1}, {"a": 1}]', [("", "uniqueItems")]),
    ("multipleOf-number", {"type": "number", "multipleOf": 0.5}, "0.3", [("", "multipleOf")]),
    ("multipleOf-integer-min", {"type": "integer", "multipleOf": 3, "minimum": 0}, "4", [("", "multipleOf")]),
    ("multipleOf-integer-max", {"type": "integer", "multipleOf": 3, "maximum": 100}, "4", [("", "multipleOf")]),
    ("multipleOf-integer-wide-range", {"type": "integer", "multipleOf": 3, "minimum": 0, "maximum": 100000}, "4",
     [("", "multipleOf")]),
    ("multipleOf-integer-fraction", {"type": "integer", "multipleOf": 1.5}, "4", [("", "multipleOf")]),
    ("minLength+pattern", {"type": "string", "minLength": 3, "pattern": "^[a-z]+$"}, '"ab"', [("", "minLength")]),
    ("maxLength+pattern", {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$"}, '"abcd"', [("", "maxLength")]),
    ("maxLength+format", {"type": "string", "maxLength": 3, "format": "email"}, '"a@bc.com"', [("", "maxLength")]),
    ("pattern-lookahead", {"type": "string", "pattern": "^(?!a)[a-z]+$"}, '"ab"', [("", "pattern")]),
    ("pattern-mid-caret", {"type": "string", "pattern": "^a(^b)$"}, '"ab"', [("", "pattern")]),
    ("pattern-mid-dollar", {"type": "string", "pattern": "^(a$)b$"}, '"ab"', [("", "pattern")]),
    ("pattern-anchor-in-repeat", {"type": "string", "pattern": "(^a)+b"}, '"aab"', [("", "pattern")]),
    ("format-date-calendar", {"type": "string", "format": "date"}, '"2021-02-30"', [("", "format")]),
    ("format-date-time-calendar", {"type": "string", "format": "date-time"}, '"2021-04-31T00:00:00Z"',
     [("", "format")]),
    ("format-time-leap-second", {"type": "string", "format": "time"}, '"12:00:60Z"', [("", "format")]),
    ("format-ipv4-leading-zero", {"type": "string", "format": "ipv4"}, '"01.2.3.4"', [("", "format")]),
    ("format-regex", {"type": "string", "format": "regex"}, '"("', [("", "format")]),
    ("format-idn-hostname", {"type": "string", "format": "idn-hostname"}, '"-a-"', [("", "format")]),
    ("required-undeclared", {"type": "object", "properties": {"a": INT}, "required": ["b"]}, '{"a": 1}',
     [("", "required")]),
    ("required-additionalProperties", {"type": "object", "additionalProperties": INT, "required": ["a"]}, "{}",
     [("", "required")]),
    ("propertyNames-declared", {"type": "object", "properties": {"bb": INT}, "additionalProperties": True,
                                "propertyNames": {"maxLength": 1}}, '{"bb": 1}', [("", "propertyNames")]),
    ("propertyNames-patternProperties", {"type": "object", "patternProperties": {"^x.*$": INT},
                                         "propertyNames": {"maxLength": 1}}, '{"xa": 1}', [("", "propertyNames")]),
    ("patternProperties-declared", {"type": "object", "properties": {"xa": STR}, "patternProperties": {"^x": INT}},
     '{"xa": "s"}', [("", "patternProperties")]),
    ("patternProperties-overlap", {"type": "object", "patternProperties": {"^x.*$": INT, "^.*a$": STR}},
     '{"xa": 1}', [("", "patternProperties")]),
    ("allOf-two", {"allOf": [{"type": "integer"}, {"type": "integer", "minimum": 3}]}, "2", [("", "allOf")]),
    ("allOf-required", {"allOf": [{"type": "object", "properties": {"a": INT}, "required": ["a"]},
                                  {"type": "object", "properties": {"b": STR}, "required": ["b"]}]}, '{"a": 1}',
     [("", "allOf")]),
    ("oneOf-overlap", {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 10}]}, "5",
     [("", "oneOf")]),
    ("oneOf-integer-number", {"oneOf": [INT, {"type": "number"}]}, "1", [("", "oneOf")]),
    ("oneOf-objects", {"oneOf": [{"type": "object", "properties": {"x": INT}},
                                 {"type": "object", "properties": {"y": INT}}]}, "{}", [("", "oneOf")]),
    ("$ref-anchor", {"$defs": {"i": {"$anchor": "x", "type": "integer"}}, "$ref": "#x"}, '"a"', [("", "$ref")]),
    # no 'type': xgrammar drops the type-specific assertions
    ("untyped-minimum", {"minimum": 5}, "4", [("", "minimum")]),
    ("untyped-exclusiveMaximum", {"exclusiveMaximum": 5}, "5", [("", "exclusiveMaximum")]),
    ("untyped-multipleOf", {"multipleOf": 5}, "6", [("", "multipleOf")]),
    ("untyped-minLength", {"minLength": 3}, '"ab"', [("", "minLength")]),
    ("untyped-pattern", {"pattern": "^a$"}, '"b"', [("", "pattern")]),
    ("untyped-format", {"format": "uuid"}, '"b"', [("", "format")]),
    ("untyped-maxItems", {"maxItems": 1}, "[1, 2]", [("", "maxItems")]),
    ("untyped-maxProperties", {"maxProperties": 1}, '{"a": 1, "b": 1}', [("", "maxProperties")]),
    ("untyped-propertyNames", {"propertyNames": {"maxLength": 1}}, '{"ab": 1}', [("", "propertyNames")]),
    ("untyped-in-anyOf-branch", {"type": "object", "properties": {"v": {"anyOf": [{"type": "boolean"},
                                                                                  {"pattern": "^(true|false)$"}]}}},
     '{"v": "yes"}', [("/properties/v/anyOf/1", "pattern")]),
    # sibling keywords xgrammar drops
    ("$ref-sibling-minimum", {"$defs": {"i": INT}, "type": "object",
                              "properties": {"a": {"$ref": "#/$defs/i", "minimum": 5}}}, '{"a": 1}',
     [("/properties/a", "minimum")]),
    ("$ref-sibling-required", {"$defs": {"o": {"type": "object", "properties": {"a": INT}}}, "$ref": "#/$defs/o",
                               "required": ["a"]}, "{}", [("", "required")]),
    ("allOf-sibling", {"type": "object", "properties": {"a": INT}, "required": ["a"],
                       "allOf": [{"type": "object", "properties": {"a": INT}}]}, "{}", [("", "required")]),
    ("anyOf-sibling", {"anyOf": [INT, STR], "minimum": 5}, "1", [("", "minimum")]),
    ("anyOf-sibling-type", {"anyOf": [INT, STR], "type": "integer"}, '"a"', [("", "type")]),
    ("oneOf-sibling", {"type": "object", "properties": {"a": INT, "b": INT},
                       "oneOf": [{"type": "object", "required": ["a"]}, {"type": "object", "required": ["b"]}]},
     "{}", [("", "oneOf")]),
    ("enum-sibling-type", {"type": "string", "enum": ["a", 1]}, "1", [("", "type")]),
    ("enum-sibling-minLength", {"type": "string", "enum": ["a", "abc"], "minLength": 2}, '"a"', [("", "minLength")]),
    ("const-sibling-minimum", {"type": "integer", "const": 1, "minimum": 3}, "1", [("", "minimum")]),
    ("const-sibling-enum", {"type": "integer", "const": 1, "enum": [2]}, "1", [("", "enum")]),
    ("enum-sibling-properties", {"type": "object", "properties": {"a": STR}, "enum": [{"a": 1}]}, '{"a":1}',
     [("", "properties")]),
]  # fmt: skip


@pytest.mark.parametrize("name,schema,text,flagged", UNENFORCED, ids=[c[0] for c in UNENFORCED])
def test_unenforced_keyword_is_accepted_by_the_mask_and_flagged(name, schema, text, flagged):
    assert violates(schema, json.loads(text)), "probe instance must violate the schema"
    assert matches(schema, text), (
        f"xgrammar now enforces {name!r}: move it to ENFORCED and update unenforced.py"
    )
    found = unenforced_keywords(schema)
    for entry in flagged:
        assert entry in found, f"{entry} not flagged; got {found}"


def test_every_table_entry_has_a_probe():
    probed = {kw for *_, flagged in UNENFORCED for _, kw in flagged}
    assert set(ALWAYS) | set(CONDITIONAL) <= probed, (set(ALWAYS) | set(CONDITIONAL)) - probed


# (id, schema, violating instance as text): the mask rejects it and nothing is flagged.
ENFORCED = [
    ("integer-minimum", {"type": "integer", "minimum": 5}, "4"),
    ("integer-maximum", {"type": "integer", "maximum": 5}, "6"),
    ("integer-exclusiveMinimum", {"type": "integer", "exclusiveMinimum": 5}, "5"),
    ("integer-exclusiveMaximum", {"type": "integer", "exclusiveMaximum": 5}, "5"),
    ("number-minimum", {"type": "number", "minimum": 5}, "4.5"),
    ("number-maximum", {"type": "number", "maximum": 0.1}, "0.1000001"),
    ("number-exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}, "0.0"),
    ("number-exclusiveMaximum", {"type": "number", "exclusiveMaximum": 0.5}, "0.5000"),
    ("number-minimum-exponent", {"type": "number", "minimum": 5}, "1e-5"),
    ("type-list-minimum", {"type": ["integer", "null"], "minimum": 5}, "4"),
    ("multipleOf-integer", {"type": "integer", "multipleOf": 3}, "-4"),
    ("multipleOf-integer-float-value", {"type": "integer", "multipleOf": 3.0}, "4"),
    ("multipleOf-integer-or-string", {"type": ["integer", "string"], "multipleOf": 3}, "4"),
    ("minLength", {"type": "string", "minLength": 3}, '"ab"'),
    ("maxLength", {"type": "string", "maxLength": 3}, '"abcd"'),
    ("maxLength-escape-counts-decoded", {"type": "string", "minLength": 2}, '"\\n"'),
    ("maxLength-unicode", {"type": "string", "maxLength": 1}, json.dumps("😀😀", ensure_ascii=False)),
    ("pattern", {"type": "string", "pattern": "^[a-z]+$"}, '"A"'),
    ("pattern-unanchored-is-fullmatched", {"type": "string", "pattern": "[0-9]"}, '"abc"'),
    ("pattern-dot-newline", {"type": "string", "pattern": "^a.b$"}, '"a\\nb"'),
    ("pattern-named-group", {"type": "string", "pattern": "^(?P<x>a)$"}, '"b"'),
    ("format-email", {"type": "string", "format": "email"}, '"ab"'),
    ("format-uuid", {"type": "string", "format": "uuid"}, '"123e4567-e89b-12d3-a456-42661417400"'),
    ("format-ipv6", {"type": "string", "format": "ipv6"}, '"1::2::3"'),
    ("format-json-pointer", {"type": "string", "format": "json-pointer"}, '"/a~2"'),
    ("minItems", {"type": "array", "items": INT, "minItems": 2}, "[1]"),
    ("maxItems", {"type": "array", "items": INT, "maxItems": 1}, "[1, 2]"),
    ("items-false", {"type": "array", "prefixItems": [INT], "items": False}, "[1, 2]"),
    ("prefixItems", {"type": "array", "prefixItems": [INT], "items": STR}, "[1, 2]"),
    ("unevaluatedItems", {"type": "array", "prefixItems": [INT], "unevaluatedItems": False}, "[1, 2]"),
    ("minProperties", {"type": "object", "properties": {"a": INT, "b": INT}, "minProperties": 1}, "{}"),
    ("maxProperties", {"type": "object", "properties": {"a": INT, "b": INT}, "maxProperties": 1},
     '{"a": 1, "b": 2}'),
    ("maxProperties-additional", {"type": "object", "additionalProperties": INT, "maxProperties": 1},
     '{"a": 1, "b": 2}'),
    ("required", {"type": "object", "properties": {"a": INT}, "required": ["a"]}, "{}"),
    ("additionalProperties-false", {"type": "object", "properties": {"a": INT}, "additionalProperties": False},
     '{"b": 1}'),
    ("additionalProperties-schema", {"type": "object", "properties": {"a": INT}, "additionalProperties": STR},
     '{"b": 1}'),
    ("unevaluatedProperties", {"type": "object", "properties": {"a": INT}, "unevaluatedProperties": INT},
     '{"b": "x"}'),
    ("duplicate-keys", {"type": "object", "additionalProperties": INT}, '{"a": 1, "a": "x"}'),
    ("propertyNames-additional", {"type": "object", "additionalProperties": INT, "propertyNames": {"maxLength": 1}},
     '{"bb": 1}'),
    ("patternProperties-single", {"type": "object", "patternProperties": {"^x.*$": INT}}, '{"xa": "s"}'),
    ("untyped-object-inferred", {"properties": {"a": INT}, "required": ["a"]}, "{}"),
    ("untyped-object-inferred-minProperties", {"properties": {"a": INT, "b": INT}, "minProperties": 1}, "{}"),
    ("untyped-array-inferred", {"items": INT, "maxItems": 1}, "[1, 2]"),
    ("enum-typed", {"type": "string", "enum": ["a", "b"]}, '"c"'),
    ("enum-object", {"enum": [{"a": 1}, [1, 2]]}, '{"a": 2}'),
    ("const-object", {"const": {"a": 1}}, '{"a": 2}'),
    ("anyOf", {"anyOf": [INT, {"type": "boolean"}]}, '"a"'),
    ("anyOf-typed-branches", {"anyOf": [{"type": "integer", "minimum": 3}, {"type": "integer", "maximum": -3}]}, "0"),
    ("oneOf-disjoint-types", {"oneOf": [INT, STR]}, "true"),
    ("oneOf-discriminator", {"$defs": {"A": {"type": "object", "properties": {"k": {"const": "a"}, "x": INT},
                                             "required": ["k", "x"]},
                                       "B": {"type": "object", "properties": {"k": {"const": "b"}, "x": STR},
                                             "required": ["k", "x"]}},
                             "oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]}, '{"k": "a", "x": "s"}'),
    ("allOf-single", {"allOf": [{"type": "integer", "minimum": 3}]}, "2"),
    ("$ref", {"definitions": {"i": {"type": "integer", "minimum": 3}}, "$ref": "#/definitions/i"}, "2"),
    ("$ref-annotated", {"$defs": {"i": {"type": "integer", "minimum": 3}}, "type": "object",
                        "properties": {"a": {"$ref": "#/$defs/i", "description": "an int", "title": "A"}}},
     '{"a": 2}'),
    ("$ref-recursive", {"$defs": {"n": {"type": "object", "properties": {"v": INT, "c": {"$ref": "#/$defs/n"}},
                                        "required": ["v"]}}, "$ref": "#/$defs/n"}, '{"v": 1, "c": {"v": "x"}}'),
    ("nested-array-minItems", {"type": "array", "items": {"type": "array", "items": INT, "minItems": 1}}, "[[]]"),
]  # fmt: skip


@pytest.mark.parametrize("name,schema,text", ENFORCED, ids=[c[0] for c in ENFORCED])
def test_enforced_keyword_is_rejected_by_the_mask_and_not_flagged(name, schema, text):
    assert violates(schema, json.loads(text)), "probe instance must violate the schema"
    assert not matches(schema, text), f"xgrammar stopped enforcing {name!r}: add a rule to unenforced.py"
    assert unenforced_keywords(schema) == []


# --------------------------------------------------------------------------- the analysis itself
def test_paths_are_json_pointers_through_defs_and_local_refs():
    schema = {
        "type": "object",
        "properties": {
            "a/b": {"type": "array", "items": {"type": "array", "items": INT, "uniqueItems": True}}
        },
        "components": {"X": {"type": "integer", "not": {"const": 1}}},  # only reachable through $ref
        "$defs": {"Y": {"type": "number", "multipleOf": 0.1}},
        "anyOf": [{"$ref": "#/components/X"}, {"$ref": "#/$defs/Y"}],
    }
    assert unenforced_keywords(schema) == [
        ("", "type"),  # a sibling of anyOf
        ("", "properties"),
        ("/properties/a~1b/items", "uniqueItems"),
        ("/$defs/Y", "multipleOf"),
        ("/components/X", "not"),
    ]
    assert all(reason for *_, reason in explain(schema))
    # propertyNames subschemas are about keys (strings); a property *named* propertyNames is not
    named = {
        "type": "object",
        "properties": {"propertyNames": {"minLength": 2}},
        "propertyNames": {"minLength": 1},
    }
    assert unenforced_keywords(named) == [("", "propertyNames"), ("/properties/propertyNames", "minLength")]


def test_pattern_scanner_allows_plain_regexes_and_flags_dropped_constructs():
    plain = [
        "^[a-z]+$",
        "[0-9]",
        "^\\$",
        "^[$^]+$",
        "^[]a]$",
        "^[^]a]$",
        "^a\\^b$",
        "^(?:a|b)$",
        "^(?P<n>a)$",
        "",
    ]
    dropped = ["^(?=a)", "^(?!a)b$", "(?<=a)b", "(?i)a", "^a$|^b$", "a^b", "a$b", "(^a)+b"]
    for pattern in plain:
        assert unenforced_keywords({"type": "string", "pattern": pattern}) == [], pattern
    for pattern in dropped:
        assert unenforced_keywords({"type": "string", "pattern": pattern}) == [("", "pattern")], pattern


def test_pydantic_schemas_with_enforceable_constraints_are_clean():
    from typing import Annotated, Literal

    from pydantic import BaseModel, Field

    class A(BaseModel):
        kind: Literal["a"]
        x: int = Field(ge=0, le=10)

    class B(BaseModel):
        kind: Literal["b"]
        y: str | None = Field(None, max_length=5)

    class M(BaseModel):
        name: str = Field(min_length=1)
        item: Annotated[A | B, Field(discriminator="kind")]
        tags: list[str] = Field(default_factory=list, max_length=3)
        score: float = Field(gt=0)
        mode: Literal["x", "y"] = "x"

    assert unenforced_keywords(M.model_json_schema()) == []

    class P(BaseModel):
        code: str = Field(pattern="^[a-z]+$", max_length=3)  # the mask drops maxLength next to pattern

    assert unenforced_keywords(P.model_json_schema()) == [("/properties/code", "maxLength")]


# --------------------------------------------------------------------------- error and validate modes
def test_error_mode_refuses_and_names_the_keyword():
    spec = JSONSchema({"type": "object", "properties": {"tags": {"type": "array", "items": STR, "uniqueItems": True}}},
                      unenforced="error")  # fmt: skip
    with pytest.raises(UnenforcedSchemaError, match="'uniqueItems' at /properties/tags"):
        check_enforceable(spec)
    assert issubclass(UnenforcedSchemaError, GrammarError)


def test_error_mode_accepts_a_clean_schema_and_validate_mode_only_reports():
    clean = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}
    assert check_enforceable(JSONSchema(clean, unenforced="error")) == []
    unclean = {"type": "integer", "not": {"const": 3}}
    assert check_enforceable(JSONSchema(unclean)) == [("", "not")]
    assert JSONSchema(unclean).validation_errors("3")  # validate mode catches what the mask let through


def test_validate_mode_catches_unenforced_formats():
    """Formats the mask checks only syntactically (date, ipv4 ...) are caught by validation."""
    assert JSONSchema({"type": "string", "format": "date"}).validation_errors('"2021-02-30"')
    assert not JSONSchema({"type": "string", "format": "date"}).validation_errors('"2021-02-28"')


def test_validate_mode_reads_draft7_dependencies():
    schema = {"type": "object", "dependencies": {"a": ["b"]}}
    assert JSONSchema(schema).validation_errors('{"a": 1}')
    assert not JSONSchema(schema).validation_errors('{"a": 1, "b": 2}')


# --------------------------------------------------------------------------- JSONSchemaBench invariant
def test_bench_every_invalid_instance_the_mask_accepts_is_flagged_and_caught(jsonschemabench):
    """All 372 files (about 10 s): compile once per schema, feed compact and indented invalid instances."""
    data = jsonschemabench
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1)
    compiled = invalid = accepted = 0
    problems = []
    for path in sorted(data.glob("*.json")):
        case = json.loads(path.read_text())
        try:
            spec = JSONSchema(case["schema"])
            grammar = spec.compile_with(compiler)
        except (GrammarError, RuntimeError):
            continue  # refused by jsonschema or by xgrammar: nothing to let through
        compiled += 1
        flagged = unenforced_keywords(spec.json_schema)
        for i, test in enumerate(case["tests"]):
            if test["valid"]:
                continue
            invalid += 1
            for text in (json.dumps(test["data"]), json.dumps(test["data"], indent=2)):
                matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)
                if not (matcher.accept_string(text) and matcher.is_completed()):
                    continue
                accepted += 1
                if not flagged:
                    problems.append(f"{path.name} #{i}: accepted, schema not flagged")
                if not spec.validation_errors(text):
                    problems.append(f"{path.name} #{i}: accepted, validation_errors finds nothing")
    assert compiled > 300 and invalid > 600, (compiled, invalid)
    assert accepted > 0  # if xgrammar ever enforces everything, update docs/grammar-unenforced.md
    assert not problems, "\n".join(problems[:20])
