"""Grammar-constrained decoding through xgrammar: specs, compilation, per-row matchers."""

from hfspec.grammar.processor import GrammarLogitsProcessor
from hfspec.grammar.specs import EBNF, JSON, GrammarSpec, JSONSchema, Lark, Regex, StructuralTag

__all__ = [
    "EBNF",
    "JSON",
    "GrammarLogitsProcessor",
    "GrammarSpec",
    "JSONSchema",
    "Lark",
    "Regex",
    "StructuralTag",
]
