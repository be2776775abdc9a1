"""hfspec: lossless speculative decoding inside Hugging Face ``generate()``.

    out = model.generate(**inputs, custom_generate=hfspec.generate,
                         assistant_strategy=hfspec.DraftModel(draft, num_tokens=5))
    hfspec.enable()   # then plain model.generate(..., assistant_strategy=...) and pipelines work
"""

import hfspec.compat  # noqa: F401  first: refuses untested torch/transformers before the imports below use their internals
from hfspec.api import disable, enable, generate, is_enabled
from hfspec.engine import SpecStats
from hfspec.exceptions import (
    AlignmentError,
    ConfigurationError,
    GrammarError,
    GrammarValidationError,
    HfspecError,
    IncompatibleDraftError,
    IncompleteOutputError,
    ModelPackageError,
    UnenforcedSchemaError,
)
from hfspec.grammar import EBNF, JSON, Crane, GrammarLogitsProcessor, JSONSchema, Lark, Regex, StructuralTag
from hfspec.grammar.aligned import AlignedStats, GrammarAligned
from hfspec.grammar.call import GrammarDecoderOnlyOutput, IncompleteOutputWarning
from hfspec.lowering import CompiledPlan, compile
from hfspec.proposers import DraftModel, JumpForward, LookupOrDraft, PromptLookup
from hfspec.proposers.tree_draft import TreeSpec

__version__ = "0.1.0"

__all__ = [
    "AlignedStats",
    "AlignmentError",
    "GrammarAligned",
    "EBNF",
    "JSON",
    "CompiledPlan",
    "Crane",
    "ConfigurationError",
    "DraftModel",
    "GrammarDecoderOnlyOutput",
    "GrammarError",
    "GrammarLogitsProcessor",
    "GrammarValidationError",
    "HfspecError",
    "IncompatibleDraftError",
    "IncompleteOutputError",
    "IncompleteOutputWarning",
    "JSONSchema",
    "JumpForward",
    "LookupOrDraft",
    "Lark",
    "ModelPackageError",
    "PromptLookup",
    "Regex",
    "StructuralTag",
    "UnenforcedSchemaError",
    "SpecStats",
    "TreeSpec",
    "compile",
    "disable",
    "enable",
    "generate",
    "is_enabled",
]
