"""Errors raised by hfspec. All are raised before any model forward pass where possible."""


class HfspecError(Exception):
    """Base class for every error hfspec raises on purpose."""


class ConfigurationError(HfspecError, ValueError):
    """A strategy, generation config or call argument that cannot work; the message says how to fix it."""


class IncompatibleDraftError(ConfigurationError):
    """The draft model cannot propose tokens for this target (vocabulary mismatch)."""


class ModelPackageError(HfspecError, RuntimeError):
    """A packaged real model is missing or its assembled file is corrupt."""


class GrammarError(ConfigurationError):
    """A grammar spec that cannot be compiled or used with this tokenizer/model; says which and why."""


class UnenforcedSchemaError(GrammarError):
    """The schema uses keywords the token mask cannot enforce and the spec asked to refuse them."""


class GrammarValidationError(HfspecError, ValueError):
    """An output that does not conform to its grammar (incomplete, or violating an unenforced keyword)."""


class IncompleteOutputError(GrammarValidationError):
    """Rows stopped (max_new_tokens, stop strings) before their grammar was complete, or violate
    the schema. ``sequences`` holds the full output so nothing is lost; ``rows`` lists the rows."""

    def __init__(self, message: str, sequences=None, rows=None) -> None:
        super().__init__(message)
        self.sequences = sequences
        self.rows = rows or []


class AlignmentError(HfspecError, RuntimeError):
    """Grammar-aligned sampling could not return every requested sample (e.g. the exact method's
    acceptance rate is too low for ``max_rounds``); the message gives the rate and what to change."""
