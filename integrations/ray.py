"""Batch JSON extraction on Ray Data: each actor loads the models once and decodes batches with hfspec.

    import ray, hfspec.integrations.ray as hray
    ds = ray.data.read_json("records.jsonl")                      # a "prompt" column
    out = hray.extract(ds, Order, batch_size=8, concurrency=2)    # lazy ray.data.Dataset
    out.write_json("out/")                                        # or out.iter_rows(), out.take(5)

or, with Ray Data's own stateful-worker pattern:

    ds.map_batches(hray.Extractor, fn_constructor_kwargs={"schema": Order.model_json_schema(), ...},
                   compute=ray.data.ActorPoolStrategy(size=2), batch_size=8, batch_format="numpy")

Progress is Ray Data's own (progress bars or, without a terminal, progress log lines). Output columns:
:data:`OUTPUT_COLUMNS`, described in docs/ray.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

try:
    import ray
    import ray.data
except ImportError as err:  # Ray is an optional extra
    raise ImportError(
        'hfspec.integrations.ray needs Ray Data, which is not installed; install it with: pip install "hfspec[ray]"'
    ) from err

import torch

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.jump_forward import check_jump_forward

from .extraction import (
    OUTPUT_COLUMNS,
    STRATEGIES,
    Extractor,
    ModelSource,
    StrategyFactory,
    as_spec,
    check_generate_kwargs,
    check_strategy,
    check_tokenizer_source,
    portable_spec,
)

_RAY_VERSION = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])

__all__ = ["OUTPUT_COLUMNS", "STRATEGIES", "Extractor", "ModelSource", "StrategyFactory", "extract"]


def extract(
    dataset: ray.data.Dataset,
    schema: Any,
    *,
    target: ModelSource = "qwen2.5-coder-1.5b-instruct",
    draft: ModelSource | None = "qwen2.5-coder-0.5b-instruct",
    tokenizer: ModelSource | None = None,
    strategy: str | StrategyFactory = "auto",
    jump_forward: bool = True,
    num_tokens: int = 7,
    prompt_column: str = "prompt",
    system_prompt: str | None = None,
    chat_template: bool | None = None,
    max_new_tokens: int = 256,
    generate_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    **map_batches_kwargs: Any,
) -> ray.data.Dataset:
    """``dataset`` with every record's extraction added (lazy: runs when consumed).

    The model and generation arguments are :class:`Extractor`'s. The rest shape the actor pool:
    ``concurrency`` actors (an int, or ``(min, max)`` to autoscale), each holding its own copy of
    the models and reserving ``num_cpus`` / ``num_gpus``; ``batch_size`` records per generate call.
    ``map_batches_kwargs`` go to ``Dataset.map_batches`` (``memory=``, ``resources=``, ``runtime_env=``).

    Everything that can be checked without the models is checked here, on the driver, so a bad call
    fails before any actor starts: strategy, tokenizer source, schema, and the prompt column when
    the dataset's schema is known without running it (else the first batch checks it).
    """
    check_strategy(strategy, draft is not None)
    check_jump_forward(jump_forward)
    check_tokenizer_source(target, tokenizer)
    check_generate_kwargs(generate_kwargs)
    spec = portable_spec(as_spec(schema))
    _check_columns(dataset, prompt_column)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    resources = {key: value for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if value is not None}
    return dataset.map_batches(
        Extractor,
        fn_constructor_kwargs=dict(
            schema=spec, target=target, draft=draft, tokenizer=tokenizer, strategy=strategy,
            jump_forward=jump_forward, num_tokens=num_tokens, prompt_column=prompt_column,
            system_prompt=system_prompt, chat_template=chat_template, max_new_tokens=max_new_tokens,
            generate_kwargs=generate_kwargs, device=device, dtype=dtype,
        ),
        **actor_pool(concurrency),
        batch_size=batch_size,
        batch_format="numpy",
        **resources,
        **map_batches_kwargs,
    )


def actor_pool(concurrency: int | tuple[int, int]) -> dict[str, Any]:
    """``map_batches`` arguments for a fixed pool of ``n`` actors, or an autoscaling ``(min, max)`` one.

    Ray 2.9 to 2.50 deprecate ``compute=ActorPoolStrategy(...)`` for ``concurrency=``; 2.51 deprecates
    it back. Each version gets the spelling it does not warn about.
    """
    fixed = isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1
    scaling = (
        isinstance(concurrency, tuple)
        and len(concurrency) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    )
    if not (fixed or scaling):
        raise ConfigurationError(f"concurrency must be an int >= 1 or a (min, max) tuple of them, got {concurrency!r}.")
    if _RAY_VERSION < (2, 51):
        return {"concurrency": concurrency}
    if fixed:
        return {"compute": ray.data.ActorPoolStrategy(size=concurrency)}
    return {"compute": ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])}


def _check_columns(dataset: ray.data.Dataset, prompt_column: str) -> None:
    """Refuse a missing prompt column or an input column the output would overwrite, when the schema is known."""
    schema = dataset.schema(fetch_if_missing=False)
    if schema is None:
        return
    names = list(schema.names)
    if prompt_column not in names:
        raise ConfigurationError(
            f"the dataset has no prompt column {prompt_column!r}; columns: {names}. Pass prompt_column=..., "
            "or add the column first (ds.map / ds.rename_columns)."
        )
    clash = sorted(set(names) & set(OUTPUT_COLUMNS))
    if clash:
        raise ConfigurationError(f"input columns {clash} would be overwritten by the output; rename them first.")
