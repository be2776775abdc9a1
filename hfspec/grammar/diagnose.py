"""Name the JSON Schema feature behind an xgrammar compile failure.

xgrammar's messages are C++ checks ("per_rule_fsm_hashes ... has_value()") that often name no
keyword. ``name_feature`` keeps the message and, if it names none of the schema's keywords, adds
the keyword family whose removal lets the schema compile. Used by ``compile_spec`` (so users see
the feature) and by the conformance report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any


def name_feature(message: str, schema: Any, compiles: Callable[[Any], bool] | None = None) -> str:
    """Make sure an "unsupported" message names the JSON Schema feature.

    Keeps xgrammar's message (without C++ source locations). If it names no keyword of the schema,
    adds the keyword family whose removal lets the schema compile (``compiles(schema) -> bool``,
    tried family by family), else what the message hints at, else the schema's keywords.
    """
    message = re.sub(r"^(.*?could not be compiled: )\S+\.cc:\d+: ", r"\1", message)  # drop C++ locations
    keywords = sorted(schema_keywords(schema))
    known = {k for family in _FEATURE_FAMILIES for k in family} | {"type", "properties", "required"}
    if any(re.search(rf"(?<![\w$]){re.escape(k)}(?!\w)", message) for k in known & set(keywords)):
        return message
    if compiles is not None:
        for family in _FEATURE_FAMILIES:
            if set(family) & set(keywords) and compiles(without_keywords(schema, family)):
                return f"{message} [feature: {'/'.join(k for k in family if k in keywords)}: compiles without it]"
    hints = {
        r"\$ref|reference|URI|uri|#/": "$ref",
        r"regex|pattern|Regex": "pattern",
        r"format": "format",
    }
    for pattern, keyword in hints.items():
        if re.search(pattern, message) and keyword in keywords:
            return f"{message} [feature: {keyword}]"
    return f"{message} [schema keywords: {', '.join(keywords[:20])}]"


_FEATURE_FAMILIES = (
    ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    ("minLength", "maxLength"),
    ("pattern",),
    ("format",),
    ("minItems", "maxItems", "uniqueItems", "contains", "minContains", "maxContains"),
    ("minProperties", "maxProperties"),
    ("patternProperties",),
    ("additionalProperties", "unevaluatedProperties"),
    ("prefixItems", "items", "additionalItems", "unevaluatedItems"),
    ("propertyNames",),
    ("dependencies", "dependentRequired", "dependentSchemas"),
    ("if", "then", "else"),
    ("not",),
    ("oneOf",),
    ("anyOf",),
    ("allOf",),
    ("enum", "const"),
    ("$ref",),
)


_NOT_KEYWORDS = {"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"}


def schema_keywords(schema: Any, found: set[str] | None = None, *, in_map: bool = False) -> set[str]:
    """Every keyword used anywhere in the schema (property names under ``properties`` etc. skipped)."""
    found = set() if found is None else found
    if isinstance(schema, dict):
        for key, value in schema.items():
            if not in_map:
                found.add(key)
            schema_keywords(value, found, in_map=(not in_map and key in _NOT_KEYWORDS))
    elif isinstance(schema, list):
        for item in schema:
            schema_keywords(item, found)
    return found


def without_keywords(schema: Any, keywords: Sequence[str], *, in_map: bool = False) -> Any:
    """A copy of ``schema`` with ``keywords`` removed wherever they are keywords (not property names)."""
    if isinstance(schema, dict):
        return {
            key: without_keywords(value, keywords, in_map=(not in_map and key in _NOT_KEYWORDS))
            for key, value in schema.items()
            if in_map or key not in keywords
        }
    if isinstance(schema, list):
        return [without_keywords(item, keywords) for item in schema]
    return schema
