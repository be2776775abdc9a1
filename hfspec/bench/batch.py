"""Measure what batching costs: the same prompts one at a time vs as one left-padded batch.

Why (issue: "measure its cost against batch 1"): hfspec runs batch > 1 with one KV-slot layout
shared by all rows, masking the slots a row rejected (docs/design.md "Batching"). A batched row
therefore attends over holes and waits for the slowest row, while every weight pass is shared.
Whether that beats running the prompts one by one is an empirical question, answered here per
config next to plain HF ``generate`` on the very same batch. HF's own assisted generation and
prompt lookup refuse batch > 1, so they have no batched number and are left out.

Method as in ``hfspec.bench.speed`` (and reusing its workloads, strategies, counters and files): one
process, a warm-up of every (config, way), the order rotated per repetition, medians. Greedy
only: every batched row must equal the same config's batch-1 output for that prompt and
hf_plain's batched row, up to and including the first stop token.

Ways::

    sequential   one generate() call per prompt (batch 1), wall times summed
    batched      one generate() call on all prompts, left-padded, attention_mask passed
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import hfspec
from hfspec.bench import environment, harness, markdown, speed

CONFIGS = ("hf_plain", "hfspec_draft", "hfspec_lookup")
WAYS = ("sequential", "batched")
SCHEMA = "hfspec-bench-batch/1"


# --------------------------------------------------------------------------- inputs
def left_pad(prompts: Sequence[speed.Prompt], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` as ``tokenizer.pad(..., padding_side="left")`` builds them.

    Padding the ids the batch-1 runs use (instead of re-tokenizing texts as a batch) guarantees
    both ways see exactly the same tokens; --tiny prompts have no tokenizer anyway.
    """
    width = max(int(p.input_ids.shape[1]) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        length = int(prompt.input_ids.shape[1])
        ids[row, width - length :] = prompt.input_ids[0]
        mask[row, width - length :] = 1
    return ids, mask


def way_inputs(
    way: str, prompts: Sequence[speed.Prompt], pad_token_id: int
) -> list[tuple[torch.Tensor, ...]]:
    """The generate() inputs of one way: one pair per call, built before the clock starts."""
    if way == "sequential":
        return [(p.input_ids, torch.ones_like(p.input_ids)) for p in prompts]
    if way == "batched":
        return [left_pad(prompts, pad_token_id)]
    raise hfspec.ConfigurationError(f"unknown way {way!r}; choose from {WAYS}")


def row_outputs(out: torch.Tensor, prompt_width: int, eos_token_ids: Sequence[int]) -> list[list[int]]:
    """Each row's new tokens up to and including its first stop token: what is counted and compared.

    Rows that stop early are padded afterwards (differently by HF and hfspec), so the tail is cut.
    """
    rows = []
    for new_ids in out[:, prompt_width:]:
        rows.append(new_ids[: harness.count_new_tokens(new_ids, eos_token_ids)].tolist())
    return rows


# --------------------------------------------------------------------------- one run
@dataclass
class BatchRun:
    """All prompts through one config in one way: one call (batched) or one call per prompt."""

    config: str
    way: str
    repeat: int
    max_new_tokens: int
    calls: int
    wall_s: float  # generate() time summed over the calls
    new_tokens: int  # summed over rows, each up to and including its first stop token
    tokens_per_s: float  # aggregate: new_tokens / wall_s
    target_forwards: int  # forward-hook count on the target, summed over the calls
    rows: dict[str, list[int]]  # prompt name -> its new tokens counted above
    spec: dict[str, Any] | None = None  # SpecStats accumulated over the calls (hfspec configs)
    same_as_sequential: dict[str, bool] | None = None  # batched: row == this config's batch-1 output
    same_as_plain: dict[str, bool] | None = None  # row == hf_plain's in the same way and repetition


class BatchRunner(speed.Runner):
    """speed.Runner's strategies and forward hook, timing a whole way instead of one prompt."""

    def run_way(self, config: str, way: str, *, repeat: int, max_new_tokens: int) -> BatchRun:
        """Time every generate() call of ``way``; one SpecStats spans them so tau is per row overall."""
        workload, stats = self.workload, hfspec.SpecStats()
        kwargs = {
            **speed.generation_kwargs("greedy", self.settings, workload, max_new_tokens),
            **speed.config_kwargs(config, workload, self.strategies, self.settings, stats),
        }
        calls = way_inputs(way, workload.prompts, workload.pad_token_id)
        outputs: list[list[int]] = []
        wall, self.counter.count = 0.0, 0
        for input_ids, attention_mask in calls:
            start = time.perf_counter()
            out = workload.target.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            wall += time.perf_counter() - start
            outputs += row_outputs(out, input_ids.shape[1], workload.eos_token_ids)
        new_tokens = sum(len(o) for o in outputs)
        return BatchRun(
            config=config,
            way=way,
            repeat=repeat,
            max_new_tokens=max_new_tokens,
            calls=len(calls),
            wall_s=wall,
            new_tokens=new_tokens,
            tokens_per_s=new_tokens / wall if wall > 0 else float("nan"),
            target_forwards=self.counter.count,
            rows={p.name: o for p, o in zip(workload.prompts, outputs, strict=True)},
            spec=speed.spec_summary(stats) if config in speed.HFSPEC_CONFIGS else None,
        )


# --------------------------------------------------------------------------- the schedule
Way = tuple[str, str]  # (config, way): rotated together, so no (config, way) always runs first


def schedule(settings: speed.BenchSettings) -> list[harness.Trial[None]]:
    """One group (all prompts); the (config, way) pairs alternate, rotated per repetition."""
    return harness.schedule([None], pair_names(settings), settings.repeats)


def pair_names(settings: speed.BenchSettings) -> list[str]:
    return [f"{config}/{way}" for config in settings.configs for way in WAYS]


def benchmark(
    settings: speed.BenchSettings, workload: speed.Workload, progress: harness.Progress | None = None
) -> tuple[list[BatchRun], list[BatchRun], list[dict[str, Any]]]:
    """Warm up every (config, way), run the schedule, check identity: (warm-ups, runs, mismatches)."""
    with BatchRunner(workload, settings) as timer:

        def call(trial: harness.Trial[None], max_new_tokens: int = settings.max_new_tokens) -> BatchRun:
            config, way = trial.config.split("/")
            return timer.run_way(config, way, repeat=trial.repeat, max_new_tokens=max_new_tokens)

        def label(trial: harness.Trial[None]) -> str:
            return f"{trial.config} #{trial.repeat}" if trial.repeat >= 0 else f"warm-up {trial.config}"

        warm = harness.warmups(None, pair_names(settings))
        warmups = harness.execute(warm, lambda t: call(t, settings.warmup_tokens), progress, label)
        runs = harness.execute(schedule(settings), call, progress, label)
    return warmups, runs, mark_identity(runs)


def mark_identity(runs: Sequence[BatchRun]) -> list[dict[str, Any]]:
    """Greedy identity across batch sizes (batched vs sequential) and against hf_plain (same way).

    hf_plain is compared with its own repetition 0, which checks that the reference is deterministic.
    Sets the runs' ``same_as_*`` fields and returns every failed check.
    """
    by_key = {(r.config, r.way, r.repeat): r for r in runs}
    found: list[dict[str, Any]] = []
    for run in runs:
        plain = by_key.get(("hf_plain", run.way, 0 if run.config == "hf_plain" else run.repeat))
        if plain is not None:
            run.same_as_plain = compare_rows(run, plain, "hf_plain", found)
        sequential = by_key.get((run.config, "sequential", run.repeat))
        if run.way == "batched" and sequential is not None:
            run.same_as_sequential = compare_rows(run, sequential, "sequential", found)
    return found


def compare_rows(
    run: BatchRun, reference: BatchRun, against: str, found: list[dict[str, Any]]
) -> dict[str, bool]:
    """Row-by-row equality; each difference is appended to ``found`` with its first differing index."""
    same = {}
    for prompt, ids in run.rows.items():
        ref = reference.rows[prompt]
        same[prompt] = ids == ref
        if not same[prompt]:
            found.append(
                {
                    "config": run.config,
                    "way": run.way,
                    "repeat": run.repeat,
                    "prompt": prompt,
                    "against": against,
                    "first_mismatch": harness.first_difference(ids, ref),
                }
            )
    return same


# --------------------------------------------------------------------------- summaries
@dataclass
class WaySummary(harness.Record):
    """Medians over repetitions of one (config, way); tau and acceptance per row, from SpecStats."""

    runs: int = 0
    calls: int = 0
    new_tokens: float | None = None  # summed over rows, each up to its first stop token
    row_new_tokens: dict[str, int] = field(default_factory=dict)
    wall_s: float | None = None
    tokens_per_s: float | None = None
    target_forwards: float | None = None
    tau: float | None = None
    acceptance_rate: float | None = None


@dataclass
class BatchSummary(harness.Record):
    """One config: both ways, the batched / one-by-one throughput ratio, and the identity verdicts."""

    config: str
    sequential: WaySummary
    batched: WaySummary
    batched_over_sequential: float | None = None
    identical_across_batch: bool | None = None
    identical_to_plain: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSummary:
        ways = {way: WaySummary.from_dict(data[way]) for way in WAYS}
        return super().from_dict({**data, **ways})


def summarize(runs: Sequence[BatchRun], configs: Sequence[str]) -> list[BatchSummary]:
    """Per config: medians of each way, the batched/sequential throughput ratio, identity verdicts."""
    rows = []
    for config in configs:
        ways = {way: way_summary([r for r in runs if (r.config, r.way) == (config, way)]) for way in WAYS}
        checks = [r for r in runs if r.config == config]
        rows.append(
            BatchSummary(
                config=config,
                **ways,
                batched_over_sequential=harness.ratio(ways["batched"].tokens_per_s, ways["sequential"].tokens_per_s),
                identical_across_batch=_all_true(r.same_as_sequential for r in checks),
                identical_to_plain=_all_true(r.same_as_plain for r in checks),
            )
        )
    return rows


def way_summary(group: Sequence[BatchRun]) -> WaySummary:
    specs = [r.spec for r in group if r.spec is not None]
    return WaySummary(
        runs=len(group),
        calls=group[0].calls,
        new_tokens=harness.median(r.new_tokens for r in group),
        row_new_tokens={p: len(ids) for p, ids in group[0].rows.items()},
        wall_s=harness.median(r.wall_s for r in group),
        tokens_per_s=harness.median(r.tokens_per_s for r in group),
        target_forwards=harness.median(r.target_forwards for r in group),
        tau=harness.median(s["tokens_per_step"] for s in specs) if specs else None,
        acceptance_rate=harness.median(s["acceptance_rate"] for s in specs) if specs else None,
    )


def _all_true(checks: Any) -> bool | None:
    """True if every recorded check passed, None if nothing was checked."""
    values = [v for c in checks if c is not None for v in c.values()]
    return all(values) if values else None


# --------------------------------------------------------------------------- results file
def build_results(
    name: str,
    command: str,
    settings: speed.BenchSettings,
    workload: speed.Workload,
    timed: tuple[list[BatchRun], list[BatchRun], list[dict[str, Any]]],
    load: dict[str, Any],
) -> dict[str, Any]:
    """The JSON written to benchmarks/results/: settings and environment first, every run last."""
    warmups, runs, found = timed
    input_ids, _ = left_pad(workload.prompts, workload.pad_token_id)
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command,
        "machine": {**environment.machine_info(settings.threads), "load_average": load},
        "settings": dataclasses.asdict(settings),
        "strategies": {
            c: s for c, s in speed.strategy_settings(settings, workload).items() if c in settings.configs
        },
        "generation": harness.jsonable(
            speed.generation_kwargs("greedy", settings, workload, settings.max_new_tokens)
        ),
        "models": harness.jsonable(workload.models),
        "prompts": speed.describe_prompts(workload),
        "batch": {
            "size": len(workload.prompts),
            "padding_side": "left",
            "padded_length": int(input_ids.shape[1]),
            "pad_token_id": workload.pad_token_id,
        },
        "all_identical": not found,
        "checks": {
            "batched_equals_sequential": not any(m["against"] == "sequential" for m in found),
            "equals_hf_plain": not any(m["against"] == "hf_plain" for m in found),
            "mismatches": found,
        },
        "summary": [dataclasses.asdict(r) for r in summarize(runs, settings.configs)],
        "outputs": decoded_outputs(runs, workload),
        "warmup": [dataclasses.asdict(r) for r in warmups],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def decoded_outputs(runs: Sequence[BatchRun], workload: speed.Workload) -> dict[str, str]:
    """Text of repetition 0 per (config, way, prompt), to read what was timed (real models only)."""
    if workload.tokenizer is None:
        return {}
    return {
        f"{r.config}/{r.way}/{prompt}": workload.tokenizer.decode(ids)
        for r in runs
        if r.repeat == 0
        for prompt, ids in r.rows.items()
    }


# --------------------------------------------------------------------------- markdown and console
TABLE_HEADER = (
    "config",
    "way",
    "new tokens",
    "target forwards",
    "wall s",
    "tok/s",
    "batch / 1 by 1",
    "tau per row",
    "accept",
    "identical",
)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Two rows per config (1 by 1, then batched); the ratio sits on the batched row."""
    size, rows = results["batch"]["size"], []
    for s in (BatchSummary.from_dict(d) for d in results["summary"]):
        for way, label in (("sequential", f"1 by 1 ({size} calls)"), ("batched", f"batch of {size}")):
            w: WaySummary = getattr(s, way)
            identical = (
                s.identical_to_plain if way == "sequential" else _and(s.identical_across_batch, s.identical_to_plain)
            )
            rows.append(
                [
                    s.config,
                    label,
                    markdown.num(w.new_tokens, 0),
                    markdown.num(w.target_forwards, 0),
                    markdown.num(w.wall_s),
                    markdown.num(w.tokens_per_s),
                    markdown.times(s.batched_over_sequential if way == "batched" else 1.0),
                    markdown.num(w.tau),
                    markdown.num(w.acceptance_rate),
                    markdown.yes_no(identical),
                ]
            )
    return rows


def _and(a: bool | None, b: bool | None) -> bool | None:
    values = [v for v in (a, b) if v is not None]
    return all(values) if values else None


def render_section(results: dict[str, Any], key: str) -> str:
    """One BENCHMARKS.md section between bench's begin/end markers, so re-rendering replaces it."""
    s, batch = results["settings"], results["batch"]
    lengths = ", ".join(f"{name} {p['num_tokens']}" for name, p in results["prompts"].items())
    lines = [
        markdown.SECTION_BEGIN.format(key=key),
        f"## {results['name']}",
        "",
        f"Command: `{results['command']}`",
        "",
        *environment.environment_lines(results),
        f"- Batch of {batch['size']} prompts (tokens: {lengths}), left-padded to {batch['padded_length']}; "
        f"greedy, max_new_tokens {s['max_new_tokens']}, repeats {s['repeats']} (medians)",
        "- Strategies: " + "; ".join(f"{c}: {markdown.inline(v)}" for c, v in results["strategies"].items()),
        "",
        "Each config runs the prompts one at a time (batch 1, wall times summed) and as one batch. "
        "New tokens are summed over rows, each up to its first stop token; tok/s is their sum over the "
        "wall time; tau per row is hfspec's committed tokens per verify forward per still-generating row. "
        "HF's assisted generation and prompt lookup refuse batch > 1, so they are not in this table.",
        "",
        identity_line(results),
        "",
        markdown.table(TABLE_HEADER, table_rows(results)),
        "",
        f"Every run: [{key}]({key})",
        markdown.SECTION_END.format(key=key),
    ]
    return "\n".join(lines) + "\n"


def identity_line(results: dict[str, Any]) -> str:
    """The verdict, telling a target-side batch effect apart from a speculative decoding error.

    hfspec is lossless if each row equals hf_plain's in the same way. If hf_plain itself changes
    between batch sizes (float32 kernels differ with shape and padding, flipping a near-tie), then
    "batched vs sequential" differences of the hfspec configs are expected too, and the text says so.
    """
    found = results["checks"]["mismatches"]
    if not found:
        return (
            "Greedy identity: every batched row equals its config's batch-1 output and hf_plain's batched "
            "row, and every batch-1 output equals hf_plain's, token for token."
        )
    bad = sorted({f"{m['config']}/{m['way']}/{m['prompt']} vs {m['against']}" for m in found})
    text = f"**WARNING: greedy outputs differ: {', '.join(bad)}.**"
    plain_batch_effect = any(m["config"] == "hf_plain" and m["against"] == "sequential" for m in found)
    if plain_batch_effect and results["checks"]["equals_hf_plain"]:
        text += (
            " hf_plain itself changes between batch sizes (a numerical batch effect of the target), "
            "while every hfspec row equals hf_plain's in the same way: no speculation error."
        )
    return text


def print_report(results: dict[str, Any], file: Any = None) -> None:
    """The section's table on the console, plus a loud warning if an identity check failed."""
    rows = table_rows(results)
    markdown.print_table(
        f"hfspec bench-batch: {results['name']}",
        TABLE_HEADER,
        rows,
        left=("config", "way", "identical"),
        bold=[i % 2 == 1 for i in range(len(rows))],
        file=file,
    )
    if not results["all_identical"]:
        print(identity_line(results).strip("*"), file=sys.stderr)


# --------------------------------------------------------------------------- entry point
def run_benchmark(
    settings: speed.BenchSettings, *, name: str, command: str, workload: speed.Workload | None = None
) -> dict[str, Any]:
    """Load the pair as ``hfspec bench`` does (unless given), warm up, run; returns the results dict."""
    unknown = [c for c in settings.configs if c not in CONFIGS]
    if unknown:
        raise hfspec.ConfigurationError(f"bench-batch configs {unknown} unknown; choose from {CONFIGS}")
    workload = workload if workload is not None else speed.load_workload(settings)
    total = len(pair_names(settings)) * (1 + settings.repeats)
    load = {"start": environment.load_average()}
    with harness.Progress(total, "hfspec bench-batch", settings.progress) as progress:
        timed = benchmark(settings, workload, progress=progress)
    load["end"] = environment.load_average()
    return build_results(name, command, settings, workload, timed, load)
