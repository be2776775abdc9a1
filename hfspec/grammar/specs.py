"""Grammar specs: what the user asks the output to look like, before any tokenizer is known.

A spec is a small immutable description (nouns, as in xgrammar). It is compiled lazily per
tokenizer by ``hfspec.grammar.compile`` and cached there, so one spec object can serve many
calls and models. ``parse`` turns a finished output back into a value and says loudly when the
text does not conform; it never hands back a violating value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hfspec.exceptions import GrammarError, GrammarValidationError

Unenforced = Literal["validate", "error"]


@dataclass(frozen=True, eq=False)
class GrammarSpec:
    """Base of every spec. ``tokenizer`` may be given here or as ``tokenizer=`` on generate()."""

    tokenizer: Any = field(default=None, kw_only=True, repr=False)

    def cache_key(self) -> tuple:
        """Hashable identity of the grammar (not the tokenizer) for the compile cache."""
        raise NotImplementedError

    def compile_with(self, compiler):  # -> xgrammar.CompiledGrammar
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The finished output as a value; raises GrammarValidationError if it does not conform."""
        if not self.matches(text):
            raise GrammarValidationError(f"{type(self).__name__}: output does not match: {text[:200]!r}")
        return text

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a complete sentence of the grammar (checked without a tokenizer)."""
        from hfspec.grammar.compile import text_matches

        return text_matches(self, text)

    def validation_errors(self, text: str) -> list[str]:
        """Reasons ``text`` violates what the grammar engine could not enforce (JSON Schema only)."""
        return []


@dataclass(frozen=True, eq=False)
class JSON(GrammarSpec):
    """Any JSON value (xgrammar's built-in JSON grammar)."""

    def cache_key(self) -> tuple:
        return ("json",)

    def compile_with(self, compiler):
        return compiler.compile_builtin_json_grammar()

    def parse(self, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise GrammarValidationError(f"output is not JSON ({err}): {text[:200]!r}") from err


@dataclass(frozen=True, eq=False)
class JSONSchema(GrammarSpec):
    """JSON conforming to a schema given as a dict, a JSON string or a pydantic model class.

    Generation is stricter than validation in two deliberate ways (xgrammar's strict mode): objects
    get no properties the schema does not declare, and properties come in declared order unless
    ``any_order=True``. Every output is still valid; docs/conformance.md counts what this excludes.

    Args:
        schema: the JSON Schema (dict or string) or a ``pydantic.BaseModel`` subclass.
        any_whitespace: allow any JSON whitespace (xgrammar's default); False forces compact
            ``", "``/``": "`` separators (or ``indent``).
        indent: with ``any_whitespace=False``, pretty-print with this indent.
        any_order: allow object properties in any order (xgrammar's default, False, requires
            the schema's declared order: fewer choices, often faster, still valid JSON).
        unenforced: what to do about schema keywords the mask cannot enforce (``not``, numeric
            bounds, ``uniqueItems`` ...; see ``hfspec.grammar.unenforced``): ``"validate"``
            (default) checks every finished output with ``jsonschema`` and reports violations
            like an incomplete output; ``"error"`` refuses the schema at call time.
    """

    schema: Any = None
    any_whitespace: bool = True
    indent: int | None = None
    any_order: bool = False
    unenforced: Unenforced = "validate"

    def __post_init__(self) -> None:
        if self.unenforced not in ("validate", "error"):
            raise GrammarError(f"JSONSchema(unenforced=...) must be 'validate' or 'error', got {self.unenforced!r}.")
        schema = self.json_schema  # validates the argument early
        try:
            import jsonschema
        except ImportError as err:  # pragma: no cover - the grammar extra installs it
            raise GrammarError('JSONSchema needs jsonschema: pip install "hfspec[grammar]"') from err
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as err:
            raise GrammarError(f"Invalid JSON Schema: {err.message} (at {list(err.absolute_path)})") from err

    @property
    def model_class(self) -> type | None:
        """The pydantic class, when the schema was given as one."""
        return self.schema if isinstance(self.schema, type) else None

    @property
    def json_schema(self) -> dict:
        """The schema as a dict."""
        schema = self.schema
        if isinstance(schema, type):
            if not hasattr(schema, "model_json_schema"):
                raise GrammarError(f"JSONSchema expects a dict, a JSON string or a pydantic model class; got {schema!r}.")
            return schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise GrammarError(f"JSONSchema: the schema string is not JSON ({err}).") from err
        if isinstance(schema, bool):
            return {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise GrammarError(
                f"JSONSchema expects a dict, a JSON string or a pydantic model class; got {type(schema).__name__}."
            )
        return schema

    def cache_key(self) -> tuple:
        return ("json_schema", json.dumps(self.json_schema), self.any_whitespace, self.indent, self.any_order)

    def compile_with(self, compiler):
        return compiler.compile_json_schema(
            json.dumps(self.json_schema),
            any_whitespace=self.any_whitespace,
            indent=self.indent,
            any_order=self.any_order,
            strict_mode=True,
        )

    def validation_errors(self, text: str) -> list[str]:
        """Every ``jsonschema`` violation of ``text`` (formats checked too); [] when valid."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return [f"not JSON: {err}"]
        from referencing.exceptions import Unresolvable

        validator = _validator(self.json_schema)
        try:
            errors = list(validator.iter_errors(value))
        except Unresolvable as err:  # e.g. a remote $ref: no network, so the output cannot be vouched for
            return [f"cannot validate against the schema ({err})"]
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]

    def parse(self, text: str) -> Any:
        """The value (a pydantic object when the schema is a model class); raises if invalid."""
        errors = self.validation_errors(text)
        if errors:
            raise GrammarValidationError(f"output violates the schema: {'; '.join(errors[:5])}")
        value = json.loads(text)
        cls = self.model_class
        return cls.model_validate(value) if cls is not None else value


def _validator(schema: dict):
    """A jsonschema validator that also checks ``format``. Without ``$schema``, schemas using the
    draft-07 ``dependencies`` keyword are read as draft-07 (2020-12 would silently ignore it)."""
    import jsonschema

    if "$schema" not in schema and '"dependencies"' in json.dumps(schema):
        cls = jsonschema.Draft7Validator
    else:
        cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@dataclass(frozen=True, eq=False)
class Regex(GrammarSpec):
    """Text matching a regular expression (xgrammar's regex dialect, anchored at both ends)."""

    pattern: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise GrammarError("Regex needs a non-empty pattern string.")

    def cache_key(self) -> tuple:
        return ("regex", self.pattern)

    def compile_with(self, compiler):
        return compiler.compile_regex(self.pattern)

    def parse(self, text: str) -> str:
        try:
            ok = re.fullmatch(self.pattern, text) is not None
        except re.error:  # xgrammar syntax Python's re lacks: fall back to the grammar engine
            ok = self.matches(text)
        if not ok:
            raise GrammarValidationError(f"output does not match /{self.pattern}/: {text[:200]!r}")
        return text


@dataclass(frozen=True, eq=False)
class EBNF(GrammarSpec):
    """A GBNF/EBNF grammar (xgrammar syntax), starting at ``root``."""

    grammar: str = ""
    root: str = "root"

    def cache_key(self) -> tuple:
        return ("ebnf", self.grammar, self.root)

    def compile_with(self, compiler):
        return compiler.compile_grammar(self.grammar, root_rule_name=self.root)


@dataclass(frozen=True, eq=False)
class Lark(GrammarSpec):
    """A Lark grammar (the subset xgrammar converts), starting at ``start``."""

    grammar: str = ""

    def cache_key(self) -> tuple:
        return ("lark", self.grammar)

    def compile_with(self, compiler):
        import xgrammar as xgr

        return compiler.compile_grammar(xgr.Grammar.from_lark(self.grammar))


@dataclass(frozen=True, eq=False)
class StructuralTag(GrammarSpec):
    """Free text with embedded structured parts (tool calls): xgrammar's structural tag.

    ``format`` is an ``xgrammar.StructuralTag`` or its dict/JSON form. For the common tool-call
    case use ``StructuralTag.tool_calls(...)``.
    """

    format: Any = None

    @classmethod
    def tool_calls(
        cls,
        tools: dict[str, Any],
        *,
        begin: str = "<tool_call>",
        end: str = "</tool_call>",
        at_least_one: bool = False,
        stop_after_first: bool = False,
        tokenizer: Any = None,
    ) -> StructuralTag:
        """Free text; after ``begin`` the model must write ``{"name": <tool>, "arguments": <schema>}`` then ``end``.

        ``tools`` maps tool names to argument schemas (dicts or pydantic classes).
        """
        bodies = []
        for name, schema in tools.items():
            args = schema.model_json_schema() if isinstance(schema, type) else schema
            bodies.append({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": args},
                "required": ["name", "arguments"],
            })
        content = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
        # One tag whose body is any of the tools: xgrammar dispatches tags on distinct ``begin``s.
        tag = {"type": "tag", "begin": begin, "content": {"type": "json_schema", "json_schema": content}, "end": end}
        fmt = {
            "type": "structural_tag",
            "format": {"type": "triggered_tags", "triggers": [begin], "tags": [tag],
                       "at_least_one": at_least_one, "stop_after_first": stop_after_first},
        }
        return cls(format=fmt, tokenizer=tokenizer)

    def _as_json(self) -> str:
        fmt = self.format
        if hasattr(fmt, "model_dump_json"):
            return fmt.model_dump_json()
        return fmt if isinstance(fmt, str) else json.dumps(fmt)

    def cache_key(self) -> tuple:
        return ("structural_tag", self._as_json())

    def compile_with(self, compiler):
        return compiler.compile_structural_tag(self._as_json())
