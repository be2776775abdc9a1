"""hfspec: lossless speculative decoding inside Hugging Face ``generate()``.

    out = model.generate(**inputs, custom_generate=hfspec.generate,
                         assistant_strategy=hfspec.DraftModel(draft, num_tokens=5))
    hfspec.enable()   # then plain model.generate(..., assistant_strategy=...) and pipelines work
"""

from hfspec.api import disable, enable, generate, is_enabled
from hfspec.engine import SpecStats
from hfspec.exceptions import ConfigurationError, HfspecError, IncompatibleDraftError, ModelPackageError
from hfspec.proposers import DraftModel, PromptLookup

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DraftModel",
    "HfspecError",
    "IncompatibleDraftError",
    "ModelPackageError",
    "PromptLookup",
    "SpecStats",
    "disable",
    "enable",
    "generate",
    "is_enabled",
]
