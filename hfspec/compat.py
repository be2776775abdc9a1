"""Refuse, at ``import hfspec``, a torch or transformers release outside the tested range.

hfspec does not only call transformers' public API: it plugs into ``generate()`` and the cache
and attention code at points that are internal and change between minor releases. A release
outside the tested range may not fail loudly; it may decode wrongly (a mask built for the wrong
layer type, a cache hfspec no longer rolls back, an argument generate no longer hands over). So an
untested version is an error, unless ``HFSPEC_ALLOW_UNTESTED=1`` turns it into a warning.

What hfspec relies on (module: transformers internal):

- ``masks``: ``transformers.cache_utils.get_layer_types_and_kwargs`` (layer types and sliding
  windows, one kwargs dict per layer since 5.19; 5.14-5.18 return one dict for all layers and
  ``hfspec`` fails on the first call, below 5.14 ``import hfspec`` fails), ``config._attn_implementation``,
  the ``{layer_type: mask}`` dict that models accept as ``attention_mask``, and the environment
  switch ``TRANSFORMERS_SDPA_FORCE_GQA`` of ``integrations.sdpa_attention`` (5.23; before it the
  switch is ignored: attention is then slower, not wrong).
- ``kv``: subclasses ``transformers.cache_utils.CacheLayerMixin`` (``lazy_initialization``,
  ``update``, ``is_initialized``) and edits ``DynamicCache.layers[i].keys / .values`` in place.
- ``runner``, ``lowering.plan``: pass the cache under the name the model's forward takes
  (``kv.cache_argument``: ``cache`` from 5.24, ``past_key_values`` before); ``api`` accepts the
  ``cache`` that 5.24's ``generate`` hands to ``custom_generate``.
- ``api``: the ``custom_generate`` hand-off of ``GenerationMixin.generate`` (which arguments
  ``_extract_generation_mode_kwargs`` keeps for a callable), the local variables of HF's
  ``generate`` frame (``_from_hf_caller`` reads ``streamer``/``tokenizer`` there),
  ``generation.utils.GENERATION_MODES_MAPPING`` and ``GenerationMode`` (``_plain_hf`` runs HF's
  private decoding method for the mode), and it patches ``GenerationMixin.generate`` (``enable()``).
- ``processors``: class names in ``generation.logits_process`` (warpers that ignore ``input_ids``).
- ``grammar.call``, ``engine``: ``generation.utils.GenerateDecoderOnlyOutput``'s fields.
- ``bench``: ``GenerationConfig._get_default_generation_params``.
- torch: ``torch._dynamo.mark_dynamic``, ``torch._inductor.config`` and ``compile_fx``
  (``lowering.plan``), so torch is held to its tested range too.

The ranges below are the ones ``scripts/check_versions.sh`` was run with (docs/compatibility.md).
Keep them equal to the ``dependencies`` in pyproject.toml.
"""

from __future__ import annotations

import os
import warnings

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from hfspec.exceptions import HfspecError

TESTED = {"transformers": ">=5.19,<5.25", "torch": ">=2.13,<2.15"}
OVERRIDE_ENV = "HFSPEC_ALLOW_UNTESTED"


class UntestedVersionError(HfspecError, ImportError):
    """torch or transformers is outside the range hfspec was tested with (raised by ``import hfspec``)."""


class UntestedVersionWarning(UserWarning):
    """An untested torch or transformers version, allowed by ``HFSPEC_ALLOW_UNTESTED=1``."""


def installed_versions() -> dict[str, str]:
    """``{"transformers": ..., "torch": ...}`` as the packages report them (``__version__``)."""
    import torch
    import transformers

    return {"transformers": str(transformers.__version__), "torch": str(torch.__version__)}


def untested(versions: dict[str, str]) -> list[str]:
    """One line per package whose version is outside ``TESTED`` (empty when all are in range)."""
    problems = []
    for name, spec in TESTED.items():
        found = versions[name]
        try:
            # a pre-release of a tested version counts (5.23.1.dev0); one of the bound does not (5.25.0.dev0 < 5.25 is out)
            ok = SpecifierSet(spec).contains(Version(found), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{name} {found} is installed; hfspec is tested with {name}{spec}")
    return problems


def check_versions() -> None:
    """Raise ``UntestedVersionError`` (or warn, with ``HFSPEC_ALLOW_UNTESTED=1``) outside the tested range."""
    problems = untested(installed_versions())
    if not problems:
        return
    pins = " ".join(f'"{name}{spec}"' for name, spec in TESTED.items())
    message = (
        "; ".join(problems) + ". hfspec relies on transformers/torch internals (cache layers, generate's "
        "custom_generate hand-off, attention masks; listed in hfspec/compat.py) that change between minor "
        "releases, so an untested version may decode wrongly instead of failing. "
        f"Install a tested version (pip install {pins}), or set {OVERRIDE_ENV}=1 to run anyway."
    )
    if os.environ.get(OVERRIDE_ENV, "") not in ("", "0"):
        warnings.warn(
            f"{message} ({OVERRIDE_ENV} is set: running untested.)", UntestedVersionWarning, stacklevel=2
        )
        return
    raise UntestedVersionError(message)


# hfspec/__init__.py imports this module first, so the check runs before any module that
# imports transformers internals (an ImportError there would hide the reason).
check_versions()
