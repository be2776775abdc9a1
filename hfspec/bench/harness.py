"""What every hfspec benchmark shares: one schedule, one execution loop, one identity rule.

Why (BENCHMARKS.md, method): speed claims are only comparable when every configuration runs in the same
process, after a warm-up, on the same inputs, with the order of configurations rotated so none
always profits from (or pays for) running first; medians across repetitions; and every greedy
output checked token for token against its reference. Each benchmark supplies only what one call
does (``run``) and which configuration is whose reference; the rest is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import statistics
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

G = TypeVar("G")  # a group of trials sharing inputs: (mode, prompt), a schema, ...
R = TypeVar("R")


@dataclass(frozen=True)
class Trial(Generic[G]):
    """One scheduled call: the group it belongs to, the configuration and the repetition (-1: warm-up)."""

    group: G
    config: str
    repeat: int


def rotated(items: Sequence[Any], offset: int) -> list[Any]:
    offset %= len(items)
    return [*items[offset:], *items[:offset]]


def schedule(groups: Sequence[G], configs: Sequence[str], repeats: int) -> list[Trial[G]]:
    """Every config on every group, repetitions outermost; within a group the configs alternate.

    The order is rotated by one per group and per repetition, so over repetitions every config
    runs first equally often and neighbouring groups start with different configs.
    """
    return [
        Trial(group, config, repeat)
        for repeat in range(repeats)
        for index, group in enumerate(groups)
        for config in rotated(configs, repeat + index)
    ]


def warmups(group: G, configs: Sequence[str]) -> list[Trial[G]]:
    """One call per config on one group before anything is timed: compiles, caches, first-touch."""
    return [Trial(group, config, -1) for config in configs]


class Progress:
    """A tqdm bar over a known number of calls, labelled with the call running now."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="run", disable=not enabled)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()

    def tick(self, label: str) -> None:
        self.bar.set_postfix_str(label)
        self.bar.update(1)


def execute(
    trials: Iterable[Trial[G]],
    run: Callable[[Trial[G]], R],
    progress: Progress | None = None,
    label: Callable[[Trial[G]], str] = lambda t: f"{t.group} {t.config} #{t.repeat}",
) -> list[R]:
    """Run the trials in order, ticking the progress bar after each."""
    out = []
    for trial in trials:
        out.append(run(trial))
        if progress is not None:
            progress.tick(label(trial))
    return out


class Checked(Protocol):
    """A run record the identity check can mark."""

    config: str
    repeat: int
    output_ids: list[int]
    identical: bool | None
    first_mismatch: int | None


C = TypeVar("C", bound=Checked)


def mark_identity(
    runs: Sequence[C], group: Callable[[C], Hashable], reference: Callable[[C], str | None]
) -> None:
    """Greedy outputs must equal their reference config's on the same group and repetition.

    ``reference(run)`` names the run's reference config (None: not checked); a reference config is
    checked against its own repetition 0, which shows it is deterministic.
    """
    by_key = {(group(r), r.config, r.repeat): r for r in runs}
    for run in runs:
        ref_config = reference(run)
        if ref_config is None:
            continue
        ref = by_key.get((group(run), ref_config, 0 if ref_config == run.config else run.repeat))
        if ref is None:
            continue
        run.identical = run.output_ids == ref.output_ids
        run.first_mismatch = None if run.identical else first_difference(run.output_ids, ref.output_ids)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# --------------------------------------------------------------------------- records
class Record:
    """A typed row of a results file: written with ``dataclasses.asdict``, read back with ``from_dict``.

    ``from_dict`` ignores keys it does not know and leaves missing ones at their defaults, so a
    renderer reads results files written before a field was added (or after one was dropped).
    """

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- statistics
def median(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def geomean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    if not values or any(not v > 0 for v in values):
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


# --------------------------------------------------------------------------- counting
class ForwardCounter:
    """Counts the target's forward calls. HF configs expose no stats, so a hook gives tau for all alike.

    Compiled configs run with the hook removed (dynamo would trace it into the graph and recompile
    on every new count); they count their forwards themselves."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.model = model
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.count += 1

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        self._handle.remove()
        try:
            yield
        finally:
            self._handle = self.model.register_forward_hook(self._hook)

    def remove(self) -> None:
        self._handle.remove()


def count_new_tokens(new_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> int:
    """Tokens up to and including the first EOS (all of them if there is none)."""
    is_eos = torch.isin(new_ids, torch.tensor(list(eos_token_ids), dtype=new_ids.dtype))
    hits = is_eos.nonzero()
    return int(hits[0, 0]) + 1 if hits.numel() else int(new_ids.numel())


# --------------------------------------------------------------------------- files
def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_json(results: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    return path
