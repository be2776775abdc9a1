"""Errors raised by hfspec. All are raised before any model forward pass where possible."""


class HfspecError(Exception):
    """Base class for every error hfspec raises on purpose."""


class ConfigurationError(HfspecError, ValueError):
    """A strategy, generation config or call argument that cannot work; the message says how to fix it."""


class IncompatibleDraftError(ConfigurationError):
    """The draft model cannot propose tokens for this target (vocabulary mismatch)."""


class ModelPackageError(HfspecError, RuntimeError):
    """A packaged real model is missing or its assembled file is corrupt."""
