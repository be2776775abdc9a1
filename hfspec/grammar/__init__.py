"""Grammar-constrained decoding through xgrammar: specs, compilation, per-row matchers."""

from hfspec.grammar.crane import Crane
from hfspec.grammar.processor import GrammarLogitsProcessor
from hfspec.grammar.specs import EBNF, JSON, GrammarSpec, JSONSchema, Lark, Regex, StructuralTag

__all__ = [
    "EBNF",
    "Crane",
    "JSON",
    "GrammarLogitsProcessor",
    "GrammarSpec",
    "JSONSchema",
    "Lark",
    "Regex",
    "StructuralTag",
]
