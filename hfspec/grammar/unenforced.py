"""JSON Schema keywords xgrammar's token mask does not enforce, so an output can violate them.

Measured on xgrammar 0.2.8 by compiling a tiny schema per keyword (``strict_mode=True``, the way
hfspec compiles) and feeding a violating instance to a character-level ``GrammarMatcher``, and by
feeding every invalid instance of JSONSchemaBench to it (docs/grammar-unenforced.md has the
evidence). To re-measure after upgrading xgrammar, run ``python -m pytest -q
tests/test_grammar_unenforced.py``: every rule below has a probe there that fails as soon as
xgrammar starts enforcing the keyword (or stops enforcing one we rely on).

The analysis is conservative: a false positive only costs a ``jsonschema`` validation of the
finished output (or a refusal with ``unenforced="error"``); a false negative would let an invalid
output pass as valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

# Keywords xgrammar ignores wherever they appear. Their subschemas are not walked: the parent
# entry already says the whole keyword is unenforced.
ALWAYS: dict[str, str] = {
    "not": "ignored (any instance passes)",
    "if": "conditional subschemas are ignored",
    "then": "conditional subschemas are ignored",
    "else": "conditional subschemas are ignored",
    "contains": "ignored",
    "minContains": "ignored",
    "maxContains": "ignored",
    "dependentRequired": "ignored",
    "dependentSchemas": "ignored",
    "dependencies": "ignored",
    "$dynamicRef": "not resolved (any instance passes)",
    "$recursiveRef": "not resolved (any instance passes)",
}

# Keywords enforced only under conditions; the reason states the condition that failed.
CONDITIONAL: dict[str, str] = {
    "uniqueItems": "uniqueItems: true is ignored",
    "multipleOf": "enforced only for type integer with an integral value and no minimum/maximum bound",
    "minLength": "ignored next to pattern or format",
    "maxLength": "ignored next to pattern or format",
    "pattern": "lookaround, inline flags and ^/$ inside the regex are ignored",
    "format": "this format is not checked (or only its syntax: no calendar, ipv4 leading zeros)",
    "required": "names not declared in properties are not enforced",
    "propertyNames": "not applied to names declared in properties or matched by patternProperties",
    "patternProperties": "not applied to declared properties; a key matching several patterns gets one",
    "allOf": "with more than one subschema only part of them is applied",
    "oneOf": "branches not provably disjoint are treated as anyOf",
    "$ref": "only local JSON-pointer references ('#' or '#/...') are resolved",
}
UNTYPED = "{kind} assertion ignored: the schema has no 'type' (nor properties/items to infer one)"
SIBLING = "ignored next to {other}"

# Formats xgrammar checks exactly (as far as probes and the bench show). Everything else is
# flagged: unknown formats are not checked at all; date, time and date-time are checked
# syntactically only (2021-02-30 and 12:00:60Z pass); ipv4 accepts leading zeros (01.2.3.4).
ENFORCED_FORMATS = frozenset({
    "email", "uuid", "ipv6", "hostname", "uri", "uri-reference", "uri-template", "duration",
    "json-pointer", "relative-json-pointer",
})  # fmt: skip

# Type-specific assertions xgrammar applies only when it knows the instance type.
TYPE_BOUND: dict[str, tuple[str, ...]] = {
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "array": ("minItems", "maxItems", "uniqueItems"),
    "object": ("required", "minProperties", "maxProperties", "propertyNames"),
}
# Without 'type', xgrammar infers object from these keywords and array from those.
INFERS = {
    "object": ("properties", "additionalProperties", "patternProperties"),
    "array": ("items", "prefixItems"),
}

# Keywords that constrain instances; everything else (title, default, $defs, x-...) is an annotation.
CONSTRAINING = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "items", "prefixItems", "additionalItems",
    "unevaluatedItems", "contains", "minContains", "maxContains", "maxItems", "minItems", "uniqueItems",
    "properties", "patternProperties", "additionalProperties", "unevaluatedProperties", "propertyNames",
    "required", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies",
    "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef",
})  # fmt: skip
COMPOSITION = ("allOf", "anyOf", "oneOf")
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

# Where subschemas live (keywords in ALWAYS are deliberately absent).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_ONE = (
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "additionalItems",
    "unevaluatedItems",
)
_SCHEMA_LISTS = ("prefixItems", "allOf", "anyOf", "oneOf")


def unenforced_keywords(schema: dict) -> list[tuple[str, str]]:
    """(JSON-pointer path, keyword) of every keyword in ``schema`` the token mask cannot enforce."""
    return [(path, keyword) for path, keyword, _ in explain(schema)]


def explain(schema: dict) -> list[tuple[str, str, str]]:
    """Like ``unenforced_keywords`` with the reason for each finding; in schema order, no duplicates."""
    found: dict[tuple[str, str], str] = {}
    visited: set[str] = set()
    pending = [(schema, "")]
    while pending:  # the schema itself, then every local $ref target not reached by the walk
        node, path = pending.pop(0)
        refs: list[str] = []
        for sub, sub_path, implied in _subschemas(node, path):
            if sub_path in visited:
                continue
            visited.add(sub_path)
            for keyword, reason in _check(sub, schema, implied):
                found.setdefault((sub_path, keyword), reason)
            ref = sub.get("$ref")
            if isinstance(ref, str) and _is_local(ref):
                refs.append(_pointer(ref))
        for ref_path in refs:
            target = _resolve(schema, ref_path)
            if ref_path not in visited and isinstance(target, dict):
                pending.append((target, ref_path))
    return [(path, keyword, reason) for (path, keyword), reason in found.items()]


def _subschemas(
    node: Any, path: str, implied: frozenset = frozenset()
) -> Iterator[tuple[dict, str, frozenset]]:
    """``node`` and every schema object nested in it, with JSON-pointer paths (pre-order).

    The third item is the instance kind xgrammar knows without a 'type': propertyNames
    subschemas apply to keys, which are strings.
    """
    if not isinstance(node, dict):
        return
    yield node, path, implied
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield from _subschemas(sub, f"{path}/{key}/{_escape(name)}")
    for key in _SCHEMA_ONE:
        kinds = frozenset({"string"}) if key == "propertyNames" else frozenset()
        yield from _subschemas(node.get(key), f"{path}/{key}", kinds)
    items = node.get("items")
    if isinstance(items, list):  # draft 4 tuple form (xgrammar refuses it, but walk it anyway)
        for i, sub in enumerate(items):
            yield from _subschemas(sub, f"{path}/items/{i}")
    else:
        yield from _subschemas(items, f"{path}/items")
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                yield from _subschemas(sub, f"{path}/{key}/{i}")


def _check(s: dict, root: dict, implied: frozenset) -> Iterator[tuple[str, str]]:
    """(keyword, reason) for each keyword of the schema object ``s`` the mask does not enforce."""
    yield from _ignored_siblings(s, root)
    for keyword, reason in ALWAYS.items():
        if keyword in s:
            yield keyword, reason
    if not (_declared_kinds(s) or implied):  # with a known type, other kinds' assertions cannot be violated
        for kind, keywords in TYPE_BOUND.items():
            for keyword in keywords:
                if keyword in s:
                    yield keyword, UNTYPED.format(kind=kind)
    if s.get("uniqueItems") is True:
        yield "uniqueItems", CONDITIONAL["uniqueItems"]
    if "multipleOf" in s and not _exact_multiple_of(s):
        yield "multipleOf", CONDITIONAL["multipleOf"]
    if "pattern" in s or "format" in s:
        for keyword in ("minLength", "maxLength"):
            if keyword in s:
                yield keyword, CONDITIONAL[keyword]
    if "pattern" in s and _pattern_unsupported(s["pattern"]):
        yield "pattern", CONDITIONAL["pattern"]
    if "format" in s and not (isinstance(s["format"], str) and s["format"] in ENFORCED_FORMATS):
        yield "format", CONDITIONAL["format"]
    properties = s.get("properties") if isinstance(s.get("properties"), dict) else {}
    if isinstance(s.get("required"), list) and any(name not in properties for name in s["required"]):
        yield "required", CONDITIONAL["required"]
    if "propertyNames" in s and (properties or s.get("patternProperties")):
        yield "propertyNames", CONDITIONAL["propertyNames"]
    patterns = s.get("patternProperties")
    if isinstance(patterns, dict) and (len(patterns) > 1 or _any_search(patterns, properties)):
        yield "patternProperties", CONDITIONAL["patternProperties"]
    if isinstance(s.get("allOf"), list) and len(s["allOf"]) > 1:
        yield "allOf", CONDITIONAL["allOf"]
    if isinstance(s.get("oneOf"), list) and not _disjoint(s["oneOf"], root):
        yield "oneOf", CONDITIONAL["oneOf"]
    if isinstance(s.get("$ref"), str) and not _is_local(s["$ref"]):
        yield "$ref", CONDITIONAL["$ref"]


def _ignored_siblings(s: dict, root: dict) -> Iterator[tuple[str, str]]:
    """Constraining keywords xgrammar drops because $ref, a composition or enum/const takes over."""
    constraining = [k for k in s if k in CONSTRAINING]
    for other in ("$ref", *COMPOSITION):
        if other in s:
            for keyword in constraining:
                if keyword != other:
                    yield keyword, SIBLING.format(other=other)
    if "const" in s or "enum" in s:  # harmless when every listed value satisfies the siblings
        for keyword in _violated_by_listed_values(s, root):
            yield keyword, SIBLING.format(other="const" if "const" in s else "enum")


def _violated_by_listed_values(s: dict, root: dict) -> set[str]:
    import jsonschema

    listed = "const" if "const" in s else "enum"
    values = [s["const"]] if listed == "const" else s["enum"] if isinstance(s["enum"], list) else []
    siblings = {k: v for k, v in s.items() if k in CONSTRAINING and k != listed}
    if not siblings:
        return set()
    if any("$ref" in sub or "$dynamicRef" in sub for sub, *_ in _subschemas(siblings, "")):
        return set(siblings)  # cannot check out of context: flag them all
    try:
        cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
        validator = cls(siblings)
        return {str(e.relative_schema_path[0]) for value in values for e in validator.iter_errors(value)}
    except Exception:  # an odd schema: be conservative
        return set(siblings)


def _declared_kinds(s: dict) -> set[str]:
    """Instance kinds xgrammar knows this schema object is about ('number' covers integer)."""
    declared = s.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list):
        return {"number" if t == "integer" else t for t in declared if isinstance(t, str)}
    inferred = {kind for kind, keys in INFERS.items() if any(k in s for k in keys)}
    return inferred if len(inferred) == 1 else set()


def _exact_multiple_of(s: dict) -> bool:
    types = s.get("type") if isinstance(s.get("type"), list) else [s.get("type")]
    value = s["multipleOf"]
    integral = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    return "integer" in types and "number" not in types and integral and not any(b in s for b in BOUNDS)


def _pattern_unsupported(pattern: Any) -> bool:
    """Whether the regex uses a construct xgrammar silently drops: ``(?...)`` or a mid-regex ^/$."""
    if not isinstance(pattern, str):
        return True
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # skip a character class; ']' right after '[' or '[^' is a literal
            i += 2 if pattern.startswith("[^", i) else 1
            i += 1 if i < n and pattern[i] == "]" else 0
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif c == "(" and pattern.startswith("(?", i) and not pattern.startswith(("(?:", "(?P<"), i):
            return True  # lookaround (ignored by xgrammar), inline flags, other group modifiers
        elif (c == "^" and i != 0) or (c == "$" and i != n - 1):
            return True
        i += 1
    return False


def _any_search(patterns: dict, properties: dict) -> bool:
    """Whether a declared property name matches a patternProperties regex (jsonschema searches)."""
    try:
        return any(re.search(p, name) for p in patterns for name in properties)
    except (re.error, TypeError):
        return bool(properties)


def _disjoint(branches: list, root: dict) -> bool:
    """Whether no instance can match two branches, so oneOf equals anyOf (which the mask enforces)."""
    resolved = [_deref(b, root) for b in branches]
    if len(resolved) < 2:
        return True
    kinds = [_branch_kinds(b) for b in resolved]
    if all(k is not None for k in kinds) and _pairwise_disjoint(kinds):
        return True
    if not all(isinstance(b, dict) and isinstance(b.get("properties"), dict) for b in resolved):
        return False
    for name in resolved[0]["properties"]:  # a discriminator: required everywhere, distinct constants
        values = [_constants(b, name, root) for b in resolved]
        if all(v is not None for v in values) and _pairwise_disjoint(values):
            return True
    return False


def _branch_kinds(b: Any) -> set[str] | None:
    if not isinstance(b, dict):
        return None
    # an explicit type only: jsonschema (unlike xgrammar) infers none from properties/items
    kinds = (_declared_kinds(b) or None) if "type" in b else None
    if kinds is None and "const" in b:
        kinds = {_kind(b["const"])}
    if kinds is None and isinstance(b.get("enum"), list):
        kinds = {_kind(v) for v in b["enum"]}
    return kinds


def _constants(b: dict, name: str, root: dict) -> set[str] | None:
    prop = _deref(b["properties"].get(name), root)
    if name not in (b.get("required") or []) or not isinstance(prop, dict):
        return None
    if "const" in prop:
        return {_canonical(prop["const"])}
    if isinstance(prop.get("enum"), list):
        return {_canonical(v) for v in prop["enum"]}
    return None


def _pairwise_disjoint(sets: list) -> bool:
    return all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _canonical(value: Any) -> str:
    """JSON text equal for values jsonschema considers equal (1 == 1.0, key order ignored)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(norm(value), sort_keys=True)


def _is_local(ref: str) -> bool:
    return ref == "#" or ref.startswith("#/")


def _pointer(ref: str) -> str:
    """The JSON pointer of a local ``$ref`` ('#/a/b' -> '/a/b'), percent-decoded."""
    return unquote(ref[1:])


def _resolve(root: Any, pointer: str) -> Any:
    node = root
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _deref(node: Any, root: dict, hops: int = 32) -> Any:
    """``node`` with local ``$ref``s followed (a node with siblings next to $ref is kept as is)."""
    while hops and isinstance(node, dict) and set(node) & CONSTRAINING == {"$ref"}:
        if not _is_local(node["$ref"]):
            break
        node, hops = _resolve(root, _pointer(node["$ref"])), hops - 1
    return node


def _escape(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")
