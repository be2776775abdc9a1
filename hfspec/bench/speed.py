"""Benchmark hfspec against plain HF ``generate`` and HF's own speculative decoding.

Why it is built this way (BENCHMARKS.md, method): speed claims are only comparable when every
configuration runs in the same process, on the same prompts, after a warm-up, with the order
of configurations rotated so none always profits from (or pays for) running first; medians
across repetitions; and the baselines include HF's *own* speculative methods, not just plain
decoding. Greedy outputs of every configuration must equal plain ``generate`` token for token,
so each greedy run is checked. Results are written as JSON (every run) plus a markdown section.

Configurations::

    hf_plain          target.generate(...)
    hf_assisted       target.generate(..., assistant_model=draft)   (K on the draft's generation_config)
    hf_prompt_lookup  target.generate(..., prompt_lookup_num_tokens=K_lookup)
    hfspec_draft      custom_generate=hfspec.generate, assistant_strategy=hfspec.DraftModel(draft, ...)
    hfspec_lookup     custom_generate=hfspec.generate, assistant_strategy=hfspec.PromptLookup(...)

tau = new tokens / target forward calls (counted by a forward hook, prefill included), so
plain decoding reads ~1 and it is comparable across HF and hfspec.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.resources
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import GenerationConfig, PreTrainedModel

import hfspec
from hfspec import stopping
from hfspec.bench import environment, harness, markdown

CONFIGS = (
    "hf_plain",
    "hf_assisted",
    "hf_prompt_lookup",
    "hf_compiled",
    "hf_compiled_autotune",
    "hfspec_draft",
    "hfspec_lookup",
    "hfspec_draft_compiled",
    "hfspec_lookup_compiled",
    "hfspec_draft_tree_compiled",
    "hfspec_lookup_tree_compiled",
    "hfspec_lookup_or_draft_compiled",
    "hfspec_lookup_or_draft_compiled_bf16",
)
DEFAULT_CONFIGS = ("hf_plain", "hf_assisted", "hf_prompt_lookup", "hfspec_draft", "hfspec_lookup")
# HF's built-ins a user could pick instead: its speculative methods and its static-cache + torch.compile decoding
HF_SPECULATIVE = ("hf_assisted", "hf_prompt_lookup", "hf_compiled", "hf_compiled_autotune")
HF_COMPILED = ("hf_compiled", "hf_compiled_autotune")
HFSPEC_COMPILED = (
    "hfspec_draft_compiled",
    "hfspec_lookup_compiled",
    "hfspec_draft_tree_compiled",
    "hfspec_lookup_tree_compiled",
    "hfspec_lookup_or_draft_compiled",
    "hfspec_lookup_or_draft_compiled_bf16",
)
HFSPEC_CONFIGS = ("hfspec_draft", "hfspec_lookup", *HFSPEC_COMPILED)
DRAFT_CONFIGS = (
    "hf_assisted",
    "hfspec_draft",
    "hfspec_draft_compiled",
    "hfspec_draft_tree_compiled",
    "hfspec_lookup_or_draft_compiled",
    "hfspec_lookup_or_draft_compiled_bf16",
)
TREE_SPEC = hfspec.TreeSpec(top_k=2, depth=4)  # hfspec_draft_tree_*: num_tokens nodes, 4 draft forwards
LOOKUP_BRANCHES = 3  # hfspec_lookup_tree_*
# The best inductor options HF's CompileConfig accepts: freezing crashes there (its static cache is a
# module attribute that freezing folds as a constant; docs/lowering.md), so max-autotune without it.
HF_AUTOTUNE_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
MODES = ("greedy", "sample")
SCHEMA = "hfspec-bench/1"
TINY_PROMPTS = ("code", "json", "edit")


# --------------------------------------------------------------------------- settings and inputs
@dataclass
class BenchSettings:
    """Everything that decides what is run; recorded verbatim in the results."""

    tiny: bool = False
    max_new_tokens: int = 64
    repeats: int = 1
    modes: tuple[str, ...] = MODES
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    prompts: tuple[str, ...] | None = None  # None = all prompts
    prompts_file: str | None = None
    temperature: float = 0.7
    seed: int = 0
    warmup_tokens: int = 8
    threads: int = 1
    draft_tokens: int = 7  # hfspec DraftModel(num_tokens) and HF num_assistant_tokens
    draft_do_sample: bool | None = None  # DraftModel(do_sample=...); None follows the call
    confidence_threshold: float = 0.0  # DraftModel(confidence_threshold=...)
    draft_vocab: int | None = None  # DraftModel(draft_vocab=...): a pruned draft head (every hfspec draft config)
    draft_dtype: str = "float32"  # the draft model's dtype, for every draft config (HF's assisted decoding too)
    lookup_tokens: int = 7  # hfspec PromptLookup(num_tokens) and HF prompt_lookup_num_tokens
    lookup_max_ngram: int = 3
    lookup_min_ngram: int = 2
    progress: bool = True
    compile_backend: str = "inductor"  # hfspec_*_compiled: hfspec.compile(backend=...)
    compile_options: dict[str, Any] | None = None  # None: hfspec's CPU default (freezing + max-autotune CPP)
    capacity: int = 1024  # hfspec_*_compiled: static KV capacity
    split_prefill: bool = False  # also time a 1-token call per (prompt, config): decode time = wall - that


@dataclass
class Prompt:
    name: str
    input_ids: torch.Tensor  # (1, T) long
    kind: str
    text: str | None = None  # chat-formatted prompt; None in --tiny (token ids only)


@dataclass
class Workload:
    """Models, tokenizer and tokenized prompts: what the runs share."""

    target: PreTrainedModel
    draft: PreTrainedModel
    tokenizer: Any | None
    prompts: list[Prompt]
    eos_token_ids: list[int]
    pad_token_id: int
    models: dict[str, Any]  # description for the results file
    plan: Any = None  # hfspec CompiledPlan whose target graph is already compiled (real runs with compiled configs)


@dataclass
class RunRecord:
    """One timed generate() call."""

    mode: str
    prompt: str
    config: str
    repeat: int
    seed: int
    max_new_tokens: int
    wall_s: float
    new_tokens: int  # generated tokens up to and including the first EOS
    tokens_per_s: float
    target_forwards: int  # forward-hook count on the target, prefill included
    tau: float  # new_tokens / target_forwards
    output_ids: list[int]  # the new tokens counted above
    spec: dict[str, Any] | None = None  # hfspec SpecStats for hfspec_* configs
    identical: bool | None = None  # greedy only: equal to hf_plain's output on the prompt
    first_mismatch: int | None = None  # index of the first differing new token, if any
    first_token_s: float | None = None  # split_prefill: median wall time of a 1-token call, same prompt and config


def default_prompts_file() -> pathlib.Path:
    """The benchmark prompts shipped with hfspec (package data, so an installed hfspec has them too)."""
    return pathlib.Path(str(importlib.resources.files("hfspec.bench") / "data" / "prompts.json"))


def load_prompt_specs(path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Read a prompts file (default: the packaged one): a list of {name, kind, messages}."""
    path = pathlib.Path(path) if path else default_prompts_file()
    if not path.is_file():
        raise hfspec.ConfigurationError(
            f"prompts file {path} not found; pass --prompts-file PATH (a JSON file {{\"prompts\": [...]}})."
        )
    specs = json.loads(path.read_text())["prompts"]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise hfspec.ConfigurationError(f"duplicate prompt names in {path}: {names}")
    return specs


def select_by_name(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Validate requested prompt names (before any model is loaded, so typos fail fast)."""
    if not wanted:
        return list(available)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise hfspec.ConfigurationError(f"unknown prompt(s) {unknown}; available: {list(available)}")
    return list(wanted)


# --------------------------------------------------------------------------- workloads
def tiny_workload(settings: BenchSettings) -> Workload:
    """Tiny random target + perturbed draft and token-id prompts: the whole pipeline in seconds."""
    from hfspec.testing import perturbed_copy, tiny_model

    # logit_scale 20: peaky enough that sampled runs accept some drafts (scale 1-4 is near uniform).
    target = tiny_model("llama", vocab_size=64, hidden_size=32, num_layers=2, seed=0, logit_scale=20.0)
    draft = perturbed_copy(target, scale=0.01, seed=1).to(getattr(torch, settings.draft_dtype))
    prompts = [
        Prompt(name, torch.tensor([ids]), kind=f"tiny token ids ({name})")
        for name, ids in _tiny_prompt_ids().items()
        if name in select_by_name(TINY_PROMPTS, settings.prompts)
    ]
    return Workload(
        target=target,
        draft=draft,
        tokenizer=None,
        prompts=prompts,
        eos_token_ids=[1],
        pad_token_id=0,
        models={
            "target": describe_model(target, "tiny llama"),
            "draft": describe_model(draft, "perturbed copy"),
        },
    )


def _tiny_prompt_ids() -> dict[str, list[int]]:
    """Deterministic prompts over ids 2..63 (0 = pad, 1 = EOS); "edit" repeats itself to be copy-heavy."""
    gen = torch.Generator().manual_seed(1234)
    code = torch.randint(2, 64, (24,), generator=gen).tolist()
    record = torch.randint(2, 64, (6,), generator=gen).tolist()
    json_like = [3, *record, 4, *record[:3], 5, *record[3:], 4, 6]
    body = torch.randint(2, 64, (16,), generator=gen).tolist()
    edit = [*body, 7, *body, 7, *body[:8]]
    return {"code": code, "json": json_like, "edit": edit}


def real_workload(settings: BenchSettings) -> Workload:
    """The packaged Qwen2.5-Coder pair (1.5B target, 0.5B draft), prompts in the chat template."""
    specs = load_prompt_specs(settings.prompts_file)
    names = select_by_name([s["name"] for s in specs], settings.prompts)
    from hfspec import models  # lazy: needs gguf/accelerate and minutes of loading

    target = models.load_model(models.TARGET, progress=settings.progress)
    tokenizer = models.load_tokenizer(models.DRAFT)
    prompts = [chat_prompt(tokenizer, s) for s in specs if s["name"] in names]
    # Freezing the 1.5B peaks at ~14 GB over its 6 GB: compile its verify graph before the draft
    # (2 GB) is loaded, or the two do not fit in 24 GiB together (killed for memory otherwise).
    plan = _compiled_target_plan(settings, target, prompts[0]) if any(c in HFSPEC_COMPILED for c in settings.configs) else None
    needs_draft = any(c in DRAFT_CONFIGS for c in settings.configs)
    draft_dtype = getattr(torch, settings.draft_dtype)  # the draft's dtype changes only q (DESIGN.md §8)
    draft = models.load_model(models.DRAFT, dtype=draft_dtype, progress=settings.progress) if needs_draft else None
    return Workload(
        target=target,
        draft=draft,
        tokenizer=tokenizer,
        prompts=prompts,
        eos_token_ids=stop_token_ids(tokenizer, target),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        models={
            "target": describe_model(target, models.TARGET),
            "draft": describe_model(draft, models.DRAFT) if draft is not None else None,
        },
        plan=plan,
    )


def _compiled_target_plan(settings: BenchSettings, target: PreTrainedModel, prompt: Prompt) -> Any:
    """A PromptLookup plan whose target graph is compiled now (two tokens of the first prompt)."""
    plan = compile_plan(settings, target, lookup_strategy(settings))
    target.generate(input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids), max_new_tokens=2,
                    do_sample=False, custom_generate=hfspec.generate, assistant_strategy=plan)
    return plan


def compile_plan(settings: BenchSettings, target: PreTrainedModel, strategy: Any) -> Any:
    """The one plan the compiled configs share (node budget: the larger of the two proposers')."""
    return hfspec.compile(
        target,
        strategy,
        backend=settings.compile_backend,
        capacity=settings.capacity,
        node_budget=max(settings.draft_tokens, settings.lookup_tokens),
        options=settings.compile_options,
    )


def lookup_strategy(settings: BenchSettings, num_branches: int = 1) -> Any:
    return hfspec.PromptLookup(
        num_tokens=settings.lookup_tokens,
        max_ngram=settings.lookup_max_ngram,
        min_ngram=settings.lookup_min_ngram,
        num_branches=num_branches,
    )


def chat_prompt(tokenizer: Any, spec: dict[str, Any]) -> Prompt:
    """Format with the chat template as text, then tokenize without adding special tokens twice."""
    text = tokenizer.apply_chat_template(spec["messages"], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return Prompt(spec["name"], ids, kind=spec.get("kind", ""), text=text)


def stop_token_ids(tokenizer: Any, model: PreTrainedModel) -> list[int]:
    """EOS ids of the model config and tokenizer, plus the chat end-of-turn token if the vocab has one.

    Instruct models end a turn with ``<|im_end|>``; the GGUF-loaded Qwen config lists only that one,
    and without the chat tokens generation would run on past the answer, timing text nobody asked for.
    Read through ``hfspec.stopping`` like every other stop-token set.
    """
    ends = (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>")  # Qwen's own generation_config stops on both
    ends = tuple(t for t in ends if t)
    return sorted(stopping.stop_token_ids(model.generation_config.eos_token_id, tokenizer, chat_end_tokens=ends))


def describe_model(model: PreTrainedModel, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "class": type(model).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "generation_config": model.generation_config.to_diff_dict(),
    }


# --------------------------------------------------------------------------- one run
def build_strategies(settings: BenchSettings, workload: Workload) -> dict[str, Any]:
    """hfspec strategies are reusable configuration, so one instance per config serves every run.

    Compiled configs share one plan's graphs (one frozen copy of each model's weights); they
    compile on their first (warm-up) call."""
    strategies = _eager_strategies(settings, workload)
    if any(c in settings.configs for c in HFSPEC_COMPILED):
        uses_draft = any(c in settings.configs for c in DRAFT_CONFIGS if c in HFSPEC_COMPILED)
        if workload.plan is not None:  # target graph compiled before the draft was loaded
            plan = workload.plan.sharing(strategies["hfspec_draft"]) if uses_draft else workload.plan
        else:
            base = strategies["hfspec_draft"] if uses_draft else strategies["hfspec_lookup"]
            plan = compile_plan(settings, workload.target, base)
        if uses_draft:
            strategies["hfspec_draft_compiled"] = plan
        strategies["hfspec_lookup_compiled"] = plan.sharing(strategies["hfspec_lookup"])
        strategies["hfspec_lookup_tree_compiled"] = plan.sharing(lookup_strategy(settings, LOOKUP_BRANCHES))
        if uses_draft:
            tree_draft = hfspec.DraftModel(
                workload.draft, num_tokens=settings.draft_tokens, tree=TREE_SPEC, draft_vocab=settings.draft_vocab
            )
            strategies["hfspec_draft_tree_compiled"] = plan.sharing(tree_draft)
            hybrid = hfspec.LookupOrDraft(strategies["hfspec_lookup"], strategies["hfspec_draft"])
            strategies["hfspec_lookup_or_draft_compiled"] = plan.sharing(hybrid)
            # the draft's one-token graph under bf16 autocast (its own graph; prefill stays float32)
            strategies["hfspec_lookup_or_draft_compiled_bf16"] = plan.sharing(hybrid, draft_compute_dtype=torch.bfloat16)
    return strategies


def _eager_strategies(settings: BenchSettings, workload: Workload) -> dict[str, Any]:
    strategies: dict[str, Any] = {"hfspec_lookup": lookup_strategy(settings)}
    if workload.draft is not None:
        strategies["hfspec_draft"] = hfspec.DraftModel(
            workload.draft,
            num_tokens=settings.draft_tokens,
            do_sample=settings.draft_do_sample,
            confidence_threshold=settings.confidence_threshold,
            draft_vocab=settings.draft_vocab,
        )
    return strategies


def generation_kwargs(mode: str, settings: BenchSettings, workload: Workload, max_new_tokens: int) -> dict:
    """Sampling is pure temperature: HF fills unset top_k with 50, so top_k=0 (and top_p=1.0) turn it off."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": workload.eos_token_ids,
        "pad_token_id": workload.pad_token_id,
    }
    if mode == "greedy":
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": settings.temperature, "top_k": 0, "top_p": 1.0}


@contextlib.contextmanager
def assistant_length(draft: PreTrainedModel, num_tokens: int) -> Iterator[None]:
    """HF reads the draft length from the ASSISTANT's generation_config, not the call; set it, then restore."""
    saved = copy.deepcopy(draft.generation_config)
    draft.generation_config.num_assistant_tokens = num_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    try:
        yield
    finally:
        draft.generation_config = saved


def config_kwargs(
    config: str,
    workload: Workload,
    strategies: dict[str, Any],
    settings: BenchSettings,
    stats: hfspec.SpecStats,
) -> dict[str, Any]:
    """The generate() arguments that select ``config``."""
    if config == "hf_plain":
        return {}
    if config == "hf_assisted":
        return {"assistant_model": workload.draft}
    if config == "hf_prompt_lookup":
        return {"prompt_lookup_num_tokens": settings.lookup_tokens}
    if config in HF_COMPILED:
        return {"cache_implementation": "static", "compile_config": hf_compile_config(config)}
    if config in HFSPEC_CONFIGS:
        return {
            "custom_generate": hfspec.generate,
            "assistant_strategy": strategies[config],
            "speculation_stats": stats,
        }
    raise hfspec.ConfigurationError(f"unknown config {config!r}; choose from {CONFIGS}")


def hf_compile_config(config: str) -> transformers.CompileConfig:
    """HF's static-cache decoding compiled: its defaults, or the best inductor options it accepts."""
    if config == "hf_compiled_autotune":  # torch.compile takes a mode or options, not both
        compile_config = transformers.CompileConfig(fullgraph=True, dynamic=False, mode=None, options=HF_AUTOTUNE_OPTIONS)
    else:
        compile_config = transformers.CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # HF compiles only on accelerators otherwise
    return compile_config


class Runner:
    """Times generate() calls on one workload; owns the target's forward hook and the hfspec strategies.

    Use as a context manager so the hook is removed from the (caller's) target afterwards.
    """

    def __init__(self, workload: Workload, settings: BenchSettings) -> None:
        self.workload, self.settings = workload, settings
        self.strategies = build_strategies(settings, workload)
        self.counter = harness.ForwardCounter(workload.target)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.counter.remove()

    def run(
        self, prompt: Prompt, config: str, mode: str, *, repeat: int, seed: int, max_new_tokens: int
    ) -> RunRecord:
        """Seed, time one generate() call, and measure what it produced."""
        workload, stats = self.workload, hfspec.SpecStats()
        kwargs = {
            **generation_kwargs(mode, self.settings, workload, max_new_tokens),
            **config_kwargs(config, workload, self.strategies, self.settings, stats),
        }
        inputs = {"input_ids": prompt.input_ids, "attention_mask": torch.ones_like(prompt.input_ids)}
        compiled = config in HF_COMPILED + HFSPEC_COMPILED
        plan = self.strategies.get(config) if config in HFSPEC_COMPILED else None
        before = plan.target.forwards if plan is not None else 0
        with self._config_guard(config), self.counter.suspended() if compiled else contextlib.nullcontext():
            torch.manual_seed(seed)
            self.counter.count = 0
            start = time.perf_counter()
            out = workload.target.generate(**inputs, **kwargs)
            wall = time.perf_counter() - start
        new_ids = out[0, prompt.input_ids.shape[1] :]
        n_new = harness.count_new_tokens(new_ids, workload.eos_token_ids)
        forwards = self.counter.count
        if plan is not None:
            forwards = plan.target.forwards - before  # eager prefill + compiled verify steps
        elif config in HF_COMPILED:
            forwards = int(new_ids.numel())  # plain decoding: one forward per generated token
        return RunRecord(
            mode=mode,
            prompt=prompt.name,
            config=config,
            repeat=repeat,
            seed=seed,
            max_new_tokens=max_new_tokens,
            wall_s=wall,
            new_tokens=n_new,
            tokens_per_s=n_new / wall if wall > 0 else float("nan"),
            target_forwards=forwards,
            tau=n_new / forwards if forwards else float("nan"),
            output_ids=new_ids[:n_new].tolist(),
            spec=spec_summary(stats) if config in HFSPEC_CONFIGS else None,
        )

    def _config_guard(self, config: str) -> contextlib.AbstractContextManager:
        if config == "hf_assisted":
            return assistant_length(self.workload.draft, self.settings.draft_tokens)
        return contextlib.nullcontext()


def spec_summary(stats: hfspec.SpecStats) -> dict[str, Any]:
    return {
        "tokens_per_step": stats.tokens_per_step,
        "acceptance_rate": stats.acceptance_rate,
        "target_forwards": stats.target_forwards,
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "emitted": stats.emitted,
    }


# --------------------------------------------------------------------------- the schedule
def run_seed(settings: BenchSettings, prompt_index: int, repeat: int) -> int:
    """Fixed per (prompt, repetition) and shared by all configs, so sampled runs see the same seed."""
    return settings.seed + 1000 * prompt_index + repeat


Group = tuple[str, int]  # (mode, prompt index)


def schedule(settings: BenchSettings, prompts: Sequence[Prompt]) -> list[harness.Trial[Group]]:
    """The timed calls in run order: every config on every (mode, prompt), rotated (harness.schedule)."""
    groups = [(mode, index) for mode in settings.modes for index in range(len(prompts))]
    return harness.schedule(groups, settings.configs, settings.repeats)


def warmup_trials(
    settings: BenchSettings, prompts: Sequence[Prompt]
) -> tuple[list[harness.Trial[Group]], list[harness.Trial[Group]]]:
    """(short, full): every (mode, config) on the first prompt, short; HF's compiled configs also every
    prompt at full length: HF's static cache is sized prompt + max_new_tokens and each size is a new
    graph, so the timed runs then measure its steady state, not compiles."""
    short = [harness.Trial((mode, 0), config, -1) for mode in settings.modes for config in settings.configs]
    full_from = 1 if settings.warmup_tokens == settings.max_new_tokens else 0
    full = [
        harness.Trial(("greedy", index), config, -1)
        for config in settings.configs
        if config in HF_COMPILED
        for index in range(full_from, len(prompts))
    ]
    return short, full


def benchmark(
    settings: BenchSettings, workload: Workload, progress: harness.Progress | None = None
) -> tuple[list[RunRecord], list[RunRecord]]:
    """Warm up, run the schedule, (optionally) time the first token, check identity: (warm-ups, runs)."""
    prompts = workload.prompts

    def label(trial: harness.Trial[Group]) -> str:
        mode, index = trial.group
        return f"{mode} {prompts[index].name} {trial.config} #{trial.repeat}"

    with Runner(workload, settings) as timer:

        def call(
            trial: harness.Trial[Group], max_new_tokens: int = settings.max_new_tokens, seed: int | None = None
        ) -> RunRecord:
            mode, index = trial.group
            if seed is None:
                seed = settings.seed if trial.repeat < 0 else run_seed(settings, index, trial.repeat)
            return timer.run(
                prompts[index], trial.config, mode, repeat=trial.repeat, seed=seed, max_new_tokens=max_new_tokens
            )

        short, full = warmup_trials(settings, prompts)
        warmups = harness.execute(short, lambda t: call(t, settings.warmup_tokens), progress, label)
        warmups += harness.execute(full, call, progress, label)
        runs = harness.execute(schedule(settings, prompts), call, progress, label)
        if settings.split_prefill:  # greedy, so the seed is only for reproducibility: the base one, as before
            first = first_token_times(settings, prompts, lambda t: call(t, 1, settings.seed), progress, label)
            for run in runs:
                run.first_token_s = first.get((run.prompt, run.config))
    mark_identity(runs)
    return warmups, runs


def first_token_times(
    settings: BenchSettings,
    prompts: Sequence[Prompt],
    call: Callable[[harness.Trial[Group]], RunRecord],
    progress: harness.Progress | None,
    label: Callable[[harness.Trial[Group]], str],
) -> dict[tuple[str, str], float]:
    """Median wall time of a greedy 1-token call per (prompt, config), configs alternating: the
    prefill (and, for speculation, whatever it costs before the first token). HF's compiled
    configs are skipped: their static cache is sized by max_new_tokens, so a 1-token call compiles anew."""
    configs = [c for c in settings.configs if c not in HF_COMPILED]
    groups = [("greedy", index) for index in range(len(prompts))]
    times: dict[tuple[str, str], list[float]] = {}
    trials = harness.schedule(groups, configs, settings.repeats)
    for trial, run in zip(trials, harness.execute(trials, call, progress, label), strict=True):
        times.setdefault((prompts[trial.group[1]].name, trial.config), []).append(run.wall_s)
    return {key: statistics.median(values) for key, values in times.items()}


def mark_identity(runs: list[RunRecord]) -> None:
    """Greedy runs must equal hf_plain's output on the same prompt and repetition (hf_plain vs its first)."""
    harness.mark_identity(
        runs, group=lambda r: (r.mode, r.prompt), reference=lambda r: "hf_plain" if r.mode == "greedy" else None
    )


# --------------------------------------------------------------------------- summaries
@dataclass
class SummaryRow(harness.Record):
    """Medians over the repetitions of one (mode, prompt, config), and its speedups."""

    mode: str
    prompt: str
    config: str
    runs: int = 0
    tokens_per_s: float | None = None
    wall_s: float | None = None
    new_tokens: float | None = None
    tau: float | None = None
    decode_tokens_per_s: float | None = None  # --split-prefill: tokens after the first / time after it
    spec_tokens_per_step: float | None = None  # hfspec configs: SpecStats.tokens_per_step
    acceptance_rate: float | None = None
    identical: bool | None = None  # greedy: every repetition equal to hf_plain's output
    speedup_vs_plain: float | None = None
    speedup_vs_best_hf: float | None = None  # over the fastest of HF's built-ins on the prompt
    decode_speedup_vs_plain: float | None = None
    decode_speedup_vs_best_hf: float | None = None


@dataclass
class GeomeanRow(harness.Record):
    """Geometric means over prompts of one (mode, config): the fair average of ratios."""

    mode: str
    config: str
    prompts: int = 0
    tokens_per_s: float | None = None
    tau: float | None = None
    speedup_vs_plain: float | None = None
    speedup_vs_best_hf: float | None = None
    decode_speedup_vs_plain: float | None = None
    decode_speedup_vs_best_hf: float | None = None
    identical: bool | None = None


def summarize(runs: Sequence[RunRecord]) -> list[SummaryRow]:
    """Median per (mode, prompt, config) and speedups against hf_plain and the best HF built-in config."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.prompt, run.config), []).append(run)
    prompt_order = {name: i for i, name in enumerate(dict.fromkeys(r.prompt for r in runs))}
    ordered = sorted(groups, key=lambda k: (_index(MODES, k[0]), prompt_order[k[1]], _index(CONFIGS, k[2])))
    rows = [_summary_row(key, groups[key]) for key in ordered]
    by_key = {(r.mode, r.prompt, r.config): r for r in rows}
    for row in rows:
        plain = by_key.get((row.mode, row.prompt, "hf_plain"))
        hf = [by_key[k] for c in HF_SPECULATIVE if (k := (row.mode, row.prompt, c)) in by_key]
        row.speedup_vs_plain = harness.ratio(row.tokens_per_s, plain.tokens_per_s if plain else None)
        row.speedup_vs_best_hf = harness.ratio(row.tokens_per_s, _best(r.tokens_per_s for r in hf))
        row.decode_speedup_vs_plain = harness.ratio(
            row.decode_tokens_per_s, plain.decode_tokens_per_s if plain else None
        )
        row.decode_speedup_vs_best_hf = harness.ratio(row.decode_tokens_per_s, _best(r.decode_tokens_per_s for r in hf))
    return rows


def _best(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _index(options: Sequence[str], value: str) -> int:
    return options.index(value) if value in options else len(options)


def _summary_row(key: tuple[str, str, str], group: Sequence[RunRecord]) -> SummaryRow:
    mode, prompt, config = key
    identical = [r.identical for r in group if r.identical is not None]
    specs = [r.spec for r in group if r.spec is not None]
    return SummaryRow(
        mode=mode,
        prompt=prompt,
        config=config,
        runs=len(group),
        tokens_per_s=statistics.median(r.tokens_per_s for r in group),
        wall_s=statistics.median(r.wall_s for r in group),
        new_tokens=statistics.median(r.new_tokens for r in group),
        tau=statistics.median(r.tau for r in group),
        decode_tokens_per_s=_decode_rate(group),
        spec_tokens_per_step=statistics.median(s["tokens_per_step"] for s in specs) if specs else None,
        acceptance_rate=statistics.median(s["acceptance_rate"] for s in specs) if specs else None,
        identical=all(identical) if identical else None,
    )


def _decode_rate(group: Sequence[RunRecord]) -> float | None:
    """Median tokens/s after the first token: (new - 1) / (wall - the 1-token call's wall)."""
    rates = [
        (r.new_tokens - 1) / (r.wall_s - r.first_token_s)
        for r in group
        if r.first_token_s is not None and r.new_tokens > 1 and r.wall_s > r.first_token_s
    ]
    return statistics.median(rates) if rates else None


def geomean_rows(rows: Sequence[SummaryRow]) -> list[GeomeanRow]:
    """Geometric mean over prompts per (mode, config): the fair average of ratios."""
    groups: dict[tuple[str, str], list[SummaryRow]] = {}
    for row in rows:
        groups.setdefault((row.mode, row.config), []).append(row)
    out = []
    for mode, config in sorted(groups, key=lambda k: (_index(MODES, k[0]), _index(CONFIGS, k[1]))):
        group = groups[(mode, config)]
        identical = [r.identical for r in group if r.identical is not None]
        out.append(
            GeomeanRow(
                mode=mode,
                config=config,
                prompts=len(group),
                tokens_per_s=harness.geomean(r.tokens_per_s for r in group),
                tau=harness.geomean(r.tau for r in group),
                speedup_vs_plain=harness.geomean(r.speedup_vs_plain for r in group),
                speedup_vs_best_hf=harness.geomean(r.speedup_vs_best_hf for r in group),
                decode_speedup_vs_plain=harness.geomean(r.decode_speedup_vs_plain for r in group),
                decode_speedup_vs_best_hf=harness.geomean(r.decode_speedup_vs_best_hf for r in group),
                identical=all(identical) if identical else None,
            )
        )
    return out


# --------------------------------------------------------------------------- results file
def strategy_settings(settings: BenchSettings, workload: Workload) -> dict[str, Any]:
    """What each speculative config actually ran with, HF defaults included, so the comparison is auditable."""
    defaults = GenerationConfig._get_default_generation_params()
    draft_config = workload.draft.generation_config if workload.draft is not None else None
    threshold = draft_config.assistant_confidence_threshold if draft_config is not None else None
    return {
        "hf_assisted": {
            "num_assistant_tokens": settings.draft_tokens,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": threshold
            if threshold is not None
            else defaults["assistant_confidence_threshold"],
            "threshold_adaptation_active": _sklearn_available(),  # HF tunes the threshold only with sklearn
        },
        "hf_prompt_lookup": {
            "prompt_lookup_num_tokens": settings.lookup_tokens,
            "max_matching_ngram_size": workload.target.generation_config.max_matching_ngram_size or 2,
        },
        "hfspec_draft": {
            "class": "DraftModel",
            "num_tokens": settings.draft_tokens,
            "do_sample": settings.draft_do_sample,
            "confidence_threshold": settings.confidence_threshold,
            "draft_vocab": settings.draft_vocab,
            "draft_dtype": settings.draft_dtype,
        },
        "hfspec_lookup": {
            "class": "PromptLookup",
            "num_tokens": settings.lookup_tokens,
            "max_ngram": settings.lookup_max_ngram,
            "min_ngram": settings.lookup_min_ngram,
        },
        **{
            config: {
                "plan": f"hfspec.compile(backend={settings.compile_backend!r}, capacity={settings.capacity}, "
                f"node_budget={max(settings.draft_tokens, settings.lookup_tokens)}, options="
                f"{settings.compile_options if settings.compile_options is not None else 'CPU default'})",
                "strategy": {
                    "hfspec_draft_compiled": "as hfspec_draft",
                    "hfspec_lookup_compiled": "as hfspec_lookup",
                    "hfspec_draft_tree_compiled": f"DraftModel(num_tokens={settings.draft_tokens}, tree={TREE_SPEC})",
                    "hfspec_lookup_tree_compiled": f"as hfspec_lookup, num_branches={LOOKUP_BRANCHES}",
                    "hfspec_lookup_or_draft_compiled": "LookupOrDraft(hfspec_lookup, hfspec_draft) "
                    "(min_tokens=3, min_agreement=0.75)",
                    "hfspec_lookup_or_draft_compiled_bf16": "as hfspec_lookup_or_draft_compiled, the draft's "
                    "one-token graph under bf16 autocast (plan.sharing(..., draft_compute_dtype=torch.bfloat16))",
                }[config],
            }
            for config in HFSPEC_COMPILED
        },
        "hf_compiled": {"cache_implementation": "static", "compile_config": "CompileConfig(fullgraph=True, dynamic=False)"},
        "hf_compiled_autotune": {
            "cache_implementation": "static",
            "compile_config": f"CompileConfig(fullgraph=True, dynamic=False, mode=None, options={HF_AUTOTUNE_OPTIONS})",
        },
    }


def _sklearn_available() -> bool:
    from transformers.utils import is_sklearn_available

    return bool(is_sklearn_available())


def build_results(
    name: str,
    command: str,
    settings: BenchSettings,
    workload: Workload,
    warmups: Sequence[RunRecord],
    runs: Sequence[RunRecord],
    load: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rows = summarize(runs)
    greedy = [r.identical for r in runs if r.identical is not None]
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command,
        "machine": {**environment.machine_info(settings.threads), "load_average": load or {"end": environment.load_average()}},
        "settings": dataclasses.asdict(settings),
        "strategies": {
            c: s for c, s in strategy_settings(settings, workload).items() if c in settings.configs
        },
        "generation": {
            m: harness.jsonable(generation_kwargs(m, settings, workload, settings.max_new_tokens))
            for m in settings.modes
        },
        "models": harness.jsonable(workload.models),
        "prompts": describe_prompts(workload),
        "all_greedy_identical": all(greedy) if greedy else None,
        "compile": {**compile_report(warmups), **(
            {"hfspec target graph (first call)": workload.plan.target.compile_seconds} if workload.plan is not None else {}
        )},
        "summary": [dataclasses.asdict(r) for r in rows],
        "geomean": [dataclasses.asdict(g) for g in geomean_rows(rows)],
        "outputs": sample_texts(runs, workload),
        "warmup": [dataclasses.asdict(r) for r in warmups],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def compile_report(warmups: Sequence[RunRecord]) -> dict[str, float]:
    """Wall time of each compiled config's first warm-up call (compile + a few tokens)."""
    out: dict[str, float] = {}
    for run in warmups:
        if run.config in HF_COMPILED + HFSPEC_COMPILED and run.config not in out:
            out[run.config] = run.wall_s
    return out


def describe_prompts(workload: Workload) -> dict[str, dict[str, Any]]:
    """Each prompt as run: its text (real models) or its token ids (--tiny, which has no tokenizer)."""
    return {
        p.name: {
            "kind": p.kind,
            "num_tokens": int(p.input_ids.shape[1]),
            "text": p.text,
            "input_ids": None if p.text else p.input_ids[0].tolist(),
        }
        for p in workload.prompts
    }


def sample_texts(runs: Sequence[RunRecord], workload: Workload) -> dict[str, str]:
    """Decoded text of repetition 0 per (mode, prompt, config), for reading what was timed."""
    if workload.tokenizer is None:
        return {}
    return {
        f"{r.mode}/{r.prompt}/{r.config}": workload.tokenizer.decode(r.output_ids)
        for r in runs
        if r.repeat == 0
    }


def greedy_mismatches(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["identical"] is False]


# --------------------------------------------------------------------------- markdown
def read_summary(results: dict[str, Any]) -> list[SummaryRow]:
    return [SummaryRow.from_dict(r) for r in results["summary"]]


def read_geomeans(results: dict[str, Any]) -> list[GeomeanRow]:
    return [GeomeanRow.from_dict(g) for g in results["geomean"]]


def render_section(results: dict[str, Any], key: str) -> str:
    """One markdown section: command, machine, settings, geomean table, per-prompt table."""
    s = results["settings"]
    decode = any(g.decode_speedup_vs_plain is not None for g in read_geomeans(results))
    decode_headers = ["decode x hf_plain", "decode x best HF"] if decode else []
    lines = [
        markdown.SECTION_BEGIN.format(key=key),
        f"## {results['name']}",
        "",
        f"Command: `{results['command']}`",
        "",
        *environment.environment_lines(results),
        f"- max_new_tokens {s['max_new_tokens']}, repeats {s['repeats']}, modes {', '.join(s['modes'])}, "
        f"sampling temperature {s['temperature']} (top-k/top-p off), seed {s['seed']}",
        "- Strategies: " + "; ".join(f"{c}: {markdown.inline(v)}" for c, v in results["strategies"].items()),
        "",
        _identity_line(results),
        "",
        "### Geometric mean over prompts",
        "",
        markdown.table(
            ["mode", "config", "tok/s", "tau", "x hf_plain", "x best HF spec", *decode_headers, "greedy identical"],
            [
                [
                    g.mode,
                    g.config,
                    markdown.num(g.tokens_per_s),
                    markdown.num(g.tau),
                    markdown.times(g.speedup_vs_plain),
                    markdown.times(g.speedup_vs_best_hf),
                    *([markdown.times(g.decode_speedup_vs_plain), markdown.times(g.decode_speedup_vs_best_hf)] if decode else []),
                    markdown.yes_no(g.identical),
                ]
                for g in read_geomeans(results)
            ],
        ),
        *(
            [
                "",
                "Decode: tokens after the first / (wall time − the median wall time of a 1-token call of the same "
                "config on the same prompt), which takes the prefill out of both sides.",
            ]
            if decode
            else []
        ),
        "",
        f"### Per prompt (median of {s['repeats']} repetition(s))",
        "",
        markdown.table(
            [
                "mode",
                "prompt",
                "config",
                "tok/s",
                "tau",
                "new tokens",
                "x hf_plain",
                "x best HF spec",
                *(["decode tok/s", "decode x hf_plain"] if decode else []),
                "accept",
                "identical",
            ],
            [
                [
                    r.mode,
                    r.prompt,
                    r.config,
                    markdown.num(r.tokens_per_s),
                    markdown.num(r.tau),
                    markdown.num(r.new_tokens, 0),
                    markdown.times(r.speedup_vs_plain),
                    markdown.times(r.speedup_vs_best_hf),
                    *([markdown.num(r.decode_tokens_per_s), markdown.times(r.decode_speedup_vs_plain)] if decode else []),
                    markdown.num(r.acceptance_rate),
                    markdown.yes_no(r.identical),
                ]
                for r in read_summary(results)
            ],
        ),
        "",
        f"Every run: [{key}]({key})",
        markdown.SECTION_END.format(key=key),
    ]
    return "\n".join(lines) + "\n"


def _identity_line(results: dict[str, Any]) -> str:
    verdict = results["all_greedy_identical"]
    if verdict is None:
        return "Greedy identity: not checked (no greedy hf_plain runs)."
    if verdict:
        return "Greedy identity: every greedy output equals hf_plain's, token for token."
    bad = sorted({f"{r['config']}/{r['prompt']}" for r in greedy_mismatches(results)})
    return f"**WARNING: greedy outputs differ from hf_plain for {', '.join(bad)}.**"


# --------------------------------------------------------------------------- console report
def report_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "mode",
        "prompt",
        "config",
        "tok/s",
        "tau",
        "new",
        "x plain",
        "x best HF",
        "accept",
        "identical",
    ]
    rows = [
        [
            r.mode,
            r.prompt,
            r.config,
            markdown.num(r.tokens_per_s),
            markdown.num(r.tau),
            markdown.num(r.new_tokens, 0),
            markdown.times(r.speedup_vs_plain),
            markdown.times(r.speedup_vs_best_hf),
            markdown.num(r.acceptance_rate),
            markdown.yes_no(r.identical).strip("*"),
        ]
        for r in read_summary(results)
    ]
    rows += [
        [
            g.mode,
            "geomean",
            g.config,
            markdown.num(g.tokens_per_s),
            markdown.num(g.tau),
            "",
            markdown.times(g.speedup_vs_plain),
            markdown.times(g.speedup_vs_best_hf),
            "",
            markdown.yes_no(g.identical).strip("*"),
        ]
        for g in read_geomeans(results)
    ]
    return header, rows


def print_report(results: dict[str, Any], file=None) -> None:
    """A rich table when rich is installed (the [bench] extra), else markdown."""
    header, rows = report_rows(results)
    markdown.print_table(
        f"hfspec bench: {results['name']}",
        header,
        rows,
        left=("mode", "prompt", "config"),
        bold=[row[1] == "geomean" for row in rows],
        file=file,
    )
    warn_if_not_identical(results, file=file)


def warn_if_not_identical(results: dict[str, Any], file=None) -> None:
    bad = greedy_mismatches(results)
    if not bad:
        return
    file = file or sys.stderr
    print("\n" + "!" * 78, file=file)
    print(
        "WARNING: greedy outputs differ from hf_plain (speculative decoding must be token-identical):",
        file=file,
    )
    for r in bad:
        print(
            f"  {r['config']:<17} prompt={r['prompt']:<8} repeat={r['repeat']} "
            f"first differing new token at index {r['first_mismatch']}",
            file=file,
        )
    print("!" * 78 + "\n", file=file)


# --------------------------------------------------------------------------- entry points
def load_workload(settings: BenchSettings) -> Workload:
    return tiny_workload(settings) if settings.tiny else real_workload(settings)


def run_benchmark(
    settings: BenchSettings, *, name: str, command: str, workload: Workload | None = None
) -> dict:
    """Load (unless given), warm up, run, and return the results dict (not yet written)."""
    workload = workload if workload is not None else load_workload(settings)
    total = sum(map(len, warmup_trials(settings, workload.prompts))) + len(schedule(settings, workload.prompts))
    if settings.split_prefill:
        total += settings.repeats * len(workload.prompts) * sum(c not in HF_COMPILED for c in settings.configs)
    load = {"start": environment.load_average()}
    with harness.Progress(total, "hfspec bench", settings.progress) as progress:
        warmups, runs = benchmark(settings, workload, progress=progress)
    load["end"] = environment.load_average()
    return build_results(name, command, settings, workload, warmups, runs, load)


def run_demo(settings: BenchSettings, prompt_text: str | None) -> dict[str, Any]:
    """Plain HF vs hfspec DraftModel vs PromptLookup on one greedy prompt (after a short warm-up)."""
    workload = load_workload(dataclasses.replace(settings, prompts=None))
    if prompt_text is not None and workload.tokenizer is not None:
        spec = {"name": "demo", "messages": [{"role": "user", "content": prompt_text}]}
        workload.prompts = [chat_prompt(workload.tokenizer, spec)]
    prompt = workload.prompts[-1]  # the copy-heavy one unless given: where speculation shows
    configs = ("hf_plain", "hfspec_draft", "hfspec_lookup")
    warmup_tokens = min(4, settings.max_new_tokens)
    with Runner(workload, settings) as runner:
        for config in configs:
            runner.run(prompt, config, "greedy", repeat=-1, seed=settings.seed, max_new_tokens=warmup_tokens)
        runs = [
            runner.run(
                prompt, c, "greedy", repeat=0, seed=settings.seed, max_new_tokens=settings.max_new_tokens
            )
            for c in configs
        ]
    mark_identity(runs)
    decode = workload.tokenizer.decode if workload.tokenizer is not None else (lambda ids: str(ids))
    return {
        "prompt": prompt.text or str(prompt.input_ids[0].tolist()),
        "runs": [{**dataclasses.asdict(r), "text": decode(r.output_ids)} for r in runs],
    }
