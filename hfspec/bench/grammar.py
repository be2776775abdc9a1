"""Benchmark grammar-constrained decoding: HF + xgrammar's processor vs hfspec with every proposer.

Why it is built this way: as ``hfspec.bench.speed`` (BENCHMARKS.md, method), every configuration runs in
one process, on the same prompts, after a warm-up, alternating with the order rotated, medians
over repetitions, target forwards counted by a forward hook. The baseline is what a user of HF
does today: plain ``target.generate`` with ``xgrammar.contrib.hf.LogitsProcessor`` (HF's assisted
generation cannot take it: the processor cannot roll back). The unconstrained references run the
same strategies on the same prompts, to show what the grammar costs (or buys) a strategy.

Greedy only: under greedy decoding the masked argmax is a deterministic function of the prompt,
so every grammar configuration must equal hf_xgrammar's output token for token, and each run is
checked. (Sampled speed would compare different outputs; the sampled distributions are checked
exactly in tests/test_grammar_engine.py instead.)

Configurations::

    hf_xgrammar                target.generate(..., logits_processor=[xgrammar.contrib.hf.LogitsProcessor])
    hf_assisted_grammar        target.generate(..., assistant_model=draft, logits_processor=[hfspec.GrammarLogitsProcessor])
    hf_prompt_lookup_grammar   target.generate(..., prompt_lookup_num_tokens=K_lookup, logits_processor=[hfspec.GrammarLogitsProcessor])
    hfspec_grammar             custom_generate=hfspec.generate, grammar=spec, no assistant_strategy, jump_forward=False
    hfspec_grammar_draft       ... assistant_strategy=DraftModel(draft, num_tokens=K), jump_forward=False
    hfspec_grammar_lookup      ... assistant_strategy=PromptLookup(num_tokens=K_lookup), jump_forward=False
    hfspec_grammar_jump        ... assistant_strategy=JumpForward() (what grammar= alone does by default)
    hfspec_grammar_jump_draft  ... assistant_strategy=JumpForward(DraftModel(draft, num_tokens=K))
    hfspec_grammar_jump_lookup ... assistant_strategy=JumpForward(PromptLookup(num_tokens=K_lookup))
    hfspec_draft               DraftModel without grammar (unconstrained reference)
    hfspec_lookup              PromptLookup without grammar (unconstrained reference)

Workload (real models): JSON Schemas of JSONSchemaBench chosen by ``select_schemas`` (a fixed
rule, see there), each asked for through the chat template as an extraction task whose record is
the schema's first valid instance flattened to ``path: value`` lines. ``--tiny``: tiny random
models, the tiny JSON tokenizer and two hand-written schemas (seconds; the numbers mean nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

import hfspec
from hfspec.bench import conformance, environment, harness, markdown, speed

SCHEMA = "hfspec-bench-grammar/1"
BASELINE = "hf_xgrammar"
GRAMMAR_CONFIGS = (
    "hf_xgrammar",
    "hf_assisted_grammar",
    "hf_prompt_lookup_grammar",
    "hfspec_grammar",
    "hfspec_grammar_draft",
    "hfspec_grammar_lookup",
    "hfspec_grammar_jump",
    "hfspec_grammar_jump_draft",
    "hfspec_grammar_jump_lookup",
)
# HF's own speculative methods with hfspec's processor (xgrammar's raises under assisted generation)
HF_SPECULATIVE_GRAMMAR = ("hf_assisted_grammar", "hf_prompt_lookup_grammar")
# hfspec configs that opt out of jump-forward (the default under grammar=) to show what it saves
NO_JUMP = ("hfspec_grammar", "hfspec_grammar_draft", "hfspec_grammar_lookup")
UNCONSTRAINED_CONFIGS = ("hfspec_draft", "hfspec_lookup")
CONFIGS = GRAMMAR_CONFIGS + UNCONSTRAINED_CONFIGS
# grammar config -> the unconstrained config running the same proposer
UNCONSTRAINED_OF = {
    "hfspec_grammar_draft": "hfspec_draft",
    "hfspec_grammar_lookup": "hfspec_lookup",
    "hfspec_grammar_jump_draft": "hfspec_draft",
    "hfspec_grammar_jump_lookup": "hfspec_lookup",
}
# jump-forward config -> the same config without jump-forward
JUMP_PAIRS = {
    "hfspec_grammar_jump": "hfspec_grammar",
    "hfspec_grammar_jump_draft": "hfspec_grammar_draft",
    "hfspec_grammar_jump_lookup": "hfspec_grammar_lookup",
}
DEFAULT_OUT = "grammar-qwen2.5-coder-1.5b_0.5b.json"  # under the results folder
SYSTEM_PROMPT = "You are a helpful assistant."
USER_TEMPLATE = (
    "Extract the record below as a JSON object that conforms to this JSON Schema.\n\n"
    "JSON Schema:\n{schema}\n\nRecord:\n{record}\n\nReply with the JSON object only."
)
MAX_SCHEMA_CHARS = 1500
MAX_INSTANCE_CHARS = 400
SELECTION_RULE = (
    "JSONSchemaBench files sorted by name; a file is eligible when its compact schema JSON has at most "
    "{max_schema} characters, its first valid test instance is a non-empty JSON object of at most "
    "{max_instance} characters (json.dumps), and JSONSchema(schema, any_whitespace=False) compiles for the "
    "tokenizer. Files are grouped by source (file-name prefix: BFCL, Github_easy, JME, ...) and the groups "
    "into families (the prefix up to its first '_': Github_easy and Github_hard are both Github). The first "
    "N eligible files are taken round-robin: over families in alphabetical order, within a family "
    "round-robin over its groups in alphabetical order, within a group by file name."
)


# --------------------------------------------------------------------------- settings and inputs
@dataclass
class GrammarBenchSettings:
    """Everything that decides what is run; recorded verbatim in the results."""

    tiny: bool = False
    max_new_tokens: int = 192
    repeats: int = 1
    configs: tuple[str, ...] = CONFIGS
    schemas: int = 6
    data_dir: str | None = None  # None: hfspec.bench.conformance's resolver
    max_schema_chars: int = MAX_SCHEMA_CHARS
    max_instance_chars: int = MAX_INSTANCE_CHARS
    warmup_tokens: int = 8
    threads: int = 1
    draft_tokens: int = 7  # DraftModel(num_tokens)
    draft_do_sample: bool | None = None
    confidence_threshold: float = 0.0
    lookup_tokens: int = 7  # PromptLookup(num_tokens)
    lookup_max_ngram: int = 3
    lookup_min_ngram: int = 2
    progress: bool = True


@dataclass
class SchemaCase:
    """One benchmarked schema: where it came from, its spec, and the prompt asking for it."""

    name: str
    group: str
    schema: dict[str, Any]
    instance: Any
    spec: Any  # hfspec.JSONSchema(schema, any_whitespace=False, tokenizer=...)
    input_ids: torch.Tensor | None = None  # (1, T)
    text: str | None = None  # chat-formatted prompt (None in --tiny)


@dataclass
class GrammarWorkload:
    target: PreTrainedModel
    draft: PreTrainedModel
    tokenizer: Any
    vocab_size: int
    cases: list[SchemaCase]
    eos_token_ids: list[int]
    pad_token_id: int
    models: dict[str, Any]
    data_dir: str | None = None


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def flatten_record(value: Any, path: str = "") -> list[str]:
    """``{"a": {"b": [1, "x"]}}`` -> ``["a.b[0]: 1", "a.b[1]: x"]``: the record as a user might paste it.

    Strings appear bare unless they span lines (then JSON-quoted); other leaves as JSON.
    """
    if isinstance(value, dict) and value:
        return [
            line for k, v in value.items() for line in flatten_record(v, f"{path}.{k}" if path else str(k))
        ]
    if isinstance(value, list) and value:
        return [line for i, v in enumerate(value) for line in flatten_record(v, f"{path}[{i}]")]
    if isinstance(value, str) and "\n" not in value and "\r" not in value:
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return [f"{path}: {text}"]


def user_message(schema: dict[str, Any], instance: Any) -> str:
    return USER_TEMPLATE.format(schema=compact(schema), record="\n".join(flatten_record(instance)))


# --------------------------------------------------------------------------- schema selection
def family(group: str) -> str:
    return group.split("_", 1)[0]


def _eligible_files(paths: Sequence[pathlib.Path], max_schema: int, max_instance: int) -> Iterator[tuple]:
    """(path, schema, first valid instance) passing the cheap checks, in the given order."""
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        schema = data.get("schema") if isinstance(data, dict) else None
        valid = [t["data"] for t in data.get("tests", []) if isinstance(t, dict) and t.get("valid")]
        if not isinstance(schema, dict) or not valid or len(compact(schema)) > max_schema:
            continue
        instance = valid[0]
        if not isinstance(instance, dict) or not instance or len(json.dumps(instance)) > max_instance:
            continue
        yield path, schema, instance


def _compiles(schema: dict[str, Any], tokenizer: Any, vocab_size: int) -> Any | None:
    """The spec if it is a valid schema xgrammar compiles for this tokenizer, else None."""
    from hfspec.grammar.compile import compile_spec

    try:
        spec = hfspec.JSONSchema(schema, any_whitespace=False, tokenizer=tokenizer)
        compile_spec(spec, tokenizer, vocab_size)
    except hfspec.GrammarError:
        return None
    return spec


def _round_robin(iterators: Sequence[Iterator]) -> Iterator:
    active = list(iterators)
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


def select_schemas(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    vocab_size: int,
    count: int,
    *,
    max_schema_chars: int = MAX_SCHEMA_CHARS,
    max_instance_chars: int = MAX_INSTANCE_CHARS,
) -> list[SchemaCase]:
    """``count`` schemas by SELECTION_RULE (deterministic; compiles only as far as it needs to)."""
    paths = sorted(p for p in pathlib.Path(data_dir).glob("*.json") if p.is_file())
    if not paths:
        raise hfspec.ConfigurationError(f"no JSONSchemaBench .json files in {data_dir}")
    groups: dict[str, list[pathlib.Path]] = {}
    for path in paths:
        groups.setdefault(conformance.source_group(path.name), []).append(path)
    families: dict[str, list[str]] = {}
    for group in sorted(groups):
        families.setdefault(family(group), []).append(group)

    def eligible(group: str) -> Iterator[SchemaCase]:
        for path, schema, instance in _eligible_files(groups[group], max_schema_chars, max_instance_chars):
            spec = _compiles(schema, tokenizer, vocab_size)
            if spec is not None:
                yield SchemaCase(path.stem, group, schema, instance, spec)

    per_family = [_round_robin([eligible(g) for g in families[f]]) for f in sorted(families)]
    cases = []
    for case in _round_robin(per_family):
        cases.append(case)
        if len(cases) == count:
            break
    if len(cases) < count:
        raise hfspec.ConfigurationError(
            f"only {len(cases)} eligible schemas in {data_dir}; asked for {count}"
        )
    return cases


# --------------------------------------------------------------------------- workloads
TINY_SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny_ab": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"enum": ["x", "yz"]}},
            "required": ["a", "b"],
        },
        {"a": 12, "b": "yz"},
    ),
    "tiny_xyz": (
        {
            "type": "object",
            "properties": {
                "x": {"type": "boolean"},
                "y": {"type": "integer", "minimum": -5, "maximum": 50},
                "z": {"enum": ["abc", "def", "fed"]},
                "f": {"type": "array", "items": {"enum": ["ab", "c"]}, "maxItems": 2},
            },
            "required": ["x", "y", "z"],
        },
        {"x": True, "y": 21, "z": "def", "f": ["c"]},
    ),
}


def tiny_workload(settings: GrammarBenchSettings) -> GrammarWorkload:
    """Tiny random llama target + perturbed draft, the tiny JSON tokenizer, two hand-written schemas.

    The prompt is the instance's own tokens (a few ids, no chat template), so lookup has text to copy.
    """
    from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model

    tokenizer = tiny_json_tokenizer()
    target = tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)
    draft = perturbed_copy(target, 0.05)
    cases = []
    for name, (schema, instance) in TINY_SCHEMAS.items():
        spec = hfspec.JSONSchema(schema, any_whitespace=False, tokenizer=tokenizer)
        ids = tokenizer(json.dumps(instance), add_special_tokens=False, return_tensors="pt")["input_ids"]
        cases.append(SchemaCase(name, "tiny", schema, instance, spec, input_ids=ids))
    return GrammarWorkload(
        target=target,
        draft=draft,
        tokenizer=tokenizer,
        vocab_size=64,
        cases=cases[: settings.schemas],
        eos_token_ids=[1],
        pad_token_id=0,
        models={
            "target": speed.describe_model(target, "tiny llama"),
            "draft": speed.describe_model(draft, "perturbed copy"),
        },
    )


def real_workload(settings: GrammarBenchSettings) -> GrammarWorkload:
    """The packaged Qwen2.5-Coder pair and JSONSchemaBench schemas asked for in the chat template."""
    data_dir = pathlib.Path(settings.data_dir) if settings.data_dir else conformance.default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        raise hfspec.ConfigurationError(
            f"JSONSchemaBench data not found ({data_dir}): pass --data DIR or set $HFSPEC_JSONSCHEMABENCH"
        )
    from hfspec import models
    from hfspec.engine_utils import lm_head_width

    target, draft, tokenizer = models.load_pair(progress=settings.progress)
    vocab_size = lm_head_width(target)
    cases = select_schemas(
        data_dir,
        tokenizer,
        vocab_size,
        settings.schemas,
        max_schema_chars=settings.max_schema_chars,
        max_instance_chars=settings.max_instance_chars,
    )
    for case in cases:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(case.schema, case.instance)},
        ]
        prompt = speed.chat_prompt(tokenizer, {"name": case.name, "messages": messages, "kind": case.group})
        case.input_ids, case.text = prompt.input_ids, prompt.text
    return GrammarWorkload(
        target=target,
        draft=draft,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        cases=cases,
        eos_token_ids=speed.stop_token_ids(tokenizer, target),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        models={
            "target": speed.describe_model(target, models.TARGET),
            "draft": speed.describe_model(draft, models.DRAFT),
        },
        data_dir=str(data_dir),
    )


def load_workload(settings: GrammarBenchSettings) -> GrammarWorkload:
    return tiny_workload(settings) if settings.tiny else real_workload(settings)


# --------------------------------------------------------------------------- one run
class TimedXGrammarProcessor(LogitsProcessor):
    """``xgrammar.contrib.hf.LogitsProcessor`` with its calls timed, stopping on the call's EOS ids.

    xgrammar's processor builds its matchers with the tokenizer's own stop tokens (Qwen: only
    ``<|im_end|>``); hfspec's matchers stop on the call's ``eos_token_id`` list, as HF's stopping
    criteria do. The matchers are pre-built here with ``override_stop_tokens`` so both sides use the
    same grammar; everything else (accept, fill, apply) is xgrammar's own code. One per call: stateful.
    """

    def __init__(self, compiled: Any, stop_token_ids: Sequence[int]) -> None:
        import xgrammar
        from xgrammar.contrib.hf import LogitsProcessor as XGrammarProcessor

        self._xgr = xgrammar
        self.inner = XGrammarProcessor(compiled)
        self.stop_token_ids = list(stop_token_ids)
        self.seconds, self.calls = 0.0, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = time.perf_counter()
        inner = self.inner
        if not inner.matchers:
            inner.batch_size = input_ids.shape[0]
            inner.compiled_grammars = inner.compiled_grammars * inner.batch_size
            inner.matchers = [
                self._xgr.GrammarMatcher(grammar, override_stop_tokens=self.stop_token_ids)
                for grammar in inner.compiled_grammars
            ]
            inner.token_bitmask = self._xgr.allocate_token_bitmask(inner.batch_size, inner.full_vocab_size)
        scores = inner(input_ids, scores)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return scores


@dataclass
class GrammarRun:
    """One timed generate() call."""

    schema: str
    config: str
    repeat: int
    max_new_tokens: int
    wall_s: float
    new_tokens: int  # up to and including the first EOS
    tokens_per_s: float
    target_forwards: int  # forward-hook count, prefill included
    tau: float  # new_tokens / target_forwards
    output_ids: list[int]
    text: str  # decoded output, EOS left out
    complete: bool  # stopped with EOS (for grammar configs: the grammar was complete)
    valid: bool  # complete and spec.validation_errors(text) == []
    errors: list[str] = field(default_factory=list)  # first validation errors of a completed output
    # After the first target forward (which reads the prompt): tokens committed later / time later.
    # Prefill weighs differently on outputs of different length; this rate leaves it out.
    decode_tokens_per_s: float | None = None
    warning: str | None = None  # hfspec.IncompleteOutputWarning message, if one was raised
    engine_valid: bool | None = None  # hfspec's own grammar_valid flag (hfspec grammar configs)
    grammar_seconds: float | None = None  # hfspec: SpecStats.grammar_seconds; hf_xgrammar: its processor's calls
    masks: int | None = None  # hfspec: masks filled; hf_xgrammar: processor calls
    grammar_us_per_mask: float | None = None
    grammar_us_per_token: float | None = None  # grammar time / new tokens
    spec: dict[str, Any] | None = None  # SpecStats (hfspec configs)
    reference: str | None = None  # config this output must equal (greedy)
    identical: bool | None = None
    first_mismatch: int | None = None


def build_strategies(settings: GrammarBenchSettings, workload: GrammarWorkload) -> dict[str, Any]:
    def draft() -> hfspec.DraftModel:
        return hfspec.DraftModel(
            workload.draft,
            num_tokens=settings.draft_tokens,
            do_sample=settings.draft_do_sample,
            confidence_threshold=settings.confidence_threshold,
        )

    def lookup() -> hfspec.PromptLookup:
        return hfspec.PromptLookup(
            num_tokens=settings.lookup_tokens,
            max_ngram=settings.lookup_max_ngram,
            min_ngram=settings.lookup_min_ngram,
        )

    return {
        "hfspec_grammar": None,
        "hfspec_grammar_draft": draft(),
        "hfspec_grammar_lookup": lookup(),
        "hfspec_grammar_jump": hfspec.JumpForward(),
        "hfspec_grammar_jump_draft": hfspec.JumpForward(draft()),
        "hfspec_grammar_jump_lookup": hfspec.JumpForward(lookup()),
        "hfspec_draft": draft(),
        "hfspec_lookup": lookup(),
    }


def strategy_settings(settings: GrammarBenchSettings) -> dict[str, dict[str, Any]]:
    draft = {
        "class": "DraftModel",
        "num_tokens": settings.draft_tokens,
        "do_sample": settings.draft_do_sample,
        "confidence_threshold": settings.confidence_threshold,
    }
    lookup = {
        "class": "PromptLookup",
        "num_tokens": settings.lookup_tokens,
        "max_ngram": settings.lookup_max_ngram,
        "min_ngram": settings.lookup_min_ngram,
    }
    return {
        "hf_xgrammar": {
            "class": "xgrammar.contrib.hf.LogitsProcessor",
            "stop_tokens": "eos_token_id",
        },
        "hf_assisted_grammar": {
            "class": "hfspec.GrammarLogitsProcessor",
            "assistant_model": "draft",
            "num_assistant_tokens": settings.draft_tokens,
            "num_assistant_tokens_schedule": "constant",
        },
        "hf_prompt_lookup_grammar": {
            "class": "hfspec.GrammarLogitsProcessor",
            "prompt_lookup_num_tokens": settings.lookup_tokens,
        },
        "hfspec_grammar": {"class": "no strategy", "jump_forward": False},
        "hfspec_grammar_draft": {**draft, "jump_forward": False},
        "hfspec_grammar_lookup": {**lookup, "jump_forward": False},
        "hfspec_grammar_jump": {"class": "JumpForward"},
        "hfspec_grammar_jump_draft": {
            "class": "JumpForward",
            "inner": f"DraftModel(num_tokens={settings.draft_tokens})",
        },
        "hfspec_grammar_jump_lookup": {
            "class": "JumpForward",
            "inner": f"PromptLookup(num_tokens={settings.lookup_tokens})",
        },
        "hfspec_draft": draft,
        "hfspec_lookup": lookup,
    }


class GrammarRunner:
    """Times generate() calls; owns the target's forward hook. Use as a context manager."""

    def __init__(self, workload: GrammarWorkload, settings: GrammarBenchSettings) -> None:
        self.workload, self.settings = workload, settings
        self.strategies = build_strategies(settings, workload)
        self.counter = harness.ForwardCounter(workload.target)
        self.first_forward_end: float | None = None
        self._first = workload.target.register_forward_hook(self._mark_first_forward)

    def _mark_first_forward(self, module, args, output) -> None:
        if self.first_forward_end is None:
            self.first_forward_end = time.perf_counter()

    def __enter__(self) -> GrammarRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.counter.remove()
        self._first.remove()

    def run(self, case: SchemaCase, config: str, *, repeat: int, max_new_tokens: int) -> GrammarRun:
        from hfspec.grammar.compile import compile_spec

        workload, stats, processor = self.workload, hfspec.SpecStats(), None
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "eos_token_id": workload.eos_token_ids,
            "pad_token_id": workload.pad_token_id,
            "return_dict_in_generate": True,
        }
        if config == BASELINE:
            compiled = compile_spec(
                case.spec, workload.tokenizer, workload.vocab_size
            )  # cached after warm-up
            processor = TimedXGrammarProcessor(compiled, workload.eos_token_ids)
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        elif config in HF_SPECULATIVE_GRAMMAR:
            # a fresh processor per call: lazily compiled per scores width (target and assistant may differ)
            grammar = hfspec.GrammarLogitsProcessor(
                case.spec, workload.tokenizer, eos_token_id=workload.eos_token_ids
            )
            kwargs["logits_processor"] = LogitsProcessorList([grammar])
            if config == "hf_assisted_grammar":
                kwargs["assistant_model"] = workload.draft
            else:
                kwargs["prompt_lookup_num_tokens"] = self.settings.lookup_tokens
        elif config in CONFIGS:
            kwargs |= {
                "custom_generate": hfspec.generate,
                "assistant_strategy": self.strategies[config],
                "speculation_stats": stats,
            }
            if config in GRAMMAR_CONFIGS:
                kwargs |= {"grammar": case.spec, "on_incomplete": "flag"}
            if config in NO_JUMP:
                kwargs["jump_forward"] = False
        else:
            raise hfspec.ConfigurationError(f"unknown config {config!r}; choose from {CONFIGS}")
        inputs = {"input_ids": case.input_ids, "attention_mask": torch.ones_like(case.input_ids)}
        guard = (
            speed.assistant_length(workload.draft, self.settings.draft_tokens)
            if config == "hf_assisted_grammar"
            else contextlib.nullcontext()
        )
        with guard, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", hfspec.IncompleteOutputWarning)
            self.counter.count = 0
            self.first_forward_end = None
            start = time.perf_counter()
            out = workload.target.generate(**inputs, **kwargs)
            wall = time.perf_counter() - start
        forwards = self.counter.count
        for w in caught:  # anything but ours goes on to the user
            if not issubclass(w.category, hfspec.IncompleteOutputWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        incomplete = [
            str(w.message) for w in caught if issubclass(w.category, hfspec.IncompleteOutputWarning)
        ]
        new_ids = out.sequences[0, case.input_ids.shape[1] :]
        n_new = harness.count_new_tokens(new_ids, workload.eos_token_ids)
        output_ids = new_ids[:n_new].tolist()
        stopped = bool(output_ids) and output_ids[-1] in workload.eos_token_ids
        text = workload.tokenizer.decode(output_ids[:-1] if stopped else output_ids)
        errors = case.spec.validation_errors(text) if stopped else []
        # tokens the first target forward committed: hfspec's stats know; plain decoding commits one.
        # HF's assisted / prompt lookup commit an unknown number (up to K + 1), so no decode rate for them
        first_tokens = stats.per_step_emitted[0] if stats.per_step_emitted else 1
        after = wall - ((self.first_forward_end or start) - start)
        decode_rate = (n_new - first_tokens) / after if after > 0 and n_new > first_tokens else None
        if config in HF_SPECULATIVE_GRAMMAR:
            decode_rate = None
        run = GrammarRun(
            schema=case.name,
            config=config,
            repeat=repeat,
            max_new_tokens=max_new_tokens,
            wall_s=wall,
            new_tokens=n_new,
            tokens_per_s=n_new / wall if wall > 0 else float("nan"),
            decode_tokens_per_s=decode_rate,
            target_forwards=forwards,
            tau=n_new / forwards if forwards else float("nan"),
            output_ids=output_ids,
            text=text,
            complete=stopped,
            valid=stopped and not errors,
            errors=errors[:5],
            warning=incomplete[0] if incomplete else None,
        )
        if hasattr(out, "grammar_valid") and out.grammar_valid is not None:
            run.engine_valid = bool(out.grammar_valid[0])
        if processor is not None:
            self._set_grammar_time(run, processor.seconds, processor.calls)
        elif config in CONFIGS and config not in (BASELINE, *HF_SPECULATIVE_GRAMMAR):
            run.spec = {
                **speed.spec_summary(stats),
                "acceptance_rate": stats.acceptance_rate if stats.drafted else None,
                "grammar_seconds": stats.grammar_seconds,
                "masks_filled": stats.masks_filled,
            }
            if config in GRAMMAR_CONFIGS:
                self._set_grammar_time(run, stats.grammar_seconds, stats.masks_filled)
        return run

    @staticmethod
    def _set_grammar_time(run: GrammarRun, seconds: float, masks: int) -> None:
        run.grammar_seconds, run.masks = seconds, masks
        run.grammar_us_per_mask = 1e6 * seconds / masks if masks else None
        run.grammar_us_per_token = 1e6 * seconds / run.new_tokens if run.new_tokens else None


# --------------------------------------------------------------------------- the schedule
def schedule(settings: GrammarBenchSettings, cases: Sequence[SchemaCase]) -> list[harness.Trial[int]]:
    """Every config on every schema (the group is the schema's index), rotated (harness.schedule)."""
    return harness.schedule(range(len(cases)), settings.configs, settings.repeats)


def benchmark(
    settings: GrammarBenchSettings, workload: GrammarWorkload, progress: harness.Progress | None = None
) -> tuple[list[GrammarRun], list[GrammarRun]]:
    """Warm up every config (first schema, short), run the schedule, check identity."""
    cases = workload.cases

    def label(trial: harness.Trial[int]) -> str:
        return f"{trial.config} {cases[trial.group].name} #{trial.repeat}"

    with GrammarRunner(workload, settings) as timer:

        def call(trial: harness.Trial[int], max_new_tokens: int = settings.max_new_tokens) -> GrammarRun:
            return timer.run(cases[trial.group], trial.config, repeat=trial.repeat, max_new_tokens=max_new_tokens)

        warm = harness.warmups(0, settings.configs)
        warmups = harness.execute(warm, lambda t: call(t, settings.warmup_tokens), progress, label)
        runs = harness.execute(schedule(settings, cases), call, progress, label)
    mark_identity(runs)
    return warmups, runs


def reference_config(config: str, configs: Sequence[str]) -> str | None:
    """Grammar configs must equal hf_xgrammar; unconstrained ones the first unconstrained config run."""
    if config in GRAMMAR_CONFIGS:
        return BASELINE if BASELINE in configs else None
    free = [c for c in UNCONSTRAINED_CONFIGS if c in configs]
    return free[0] if free else None


def mark_identity(runs: Sequence[GrammarRun]) -> None:
    """Greedy: each output vs its reference's on the same schema and repetition (the reference vs its
    repetition 0, which checks the reference is deterministic)."""
    configs = list(dict.fromkeys(r.config for r in runs))
    for run in runs:
        run.reference = reference_config(run.config, configs)
    harness.mark_identity(runs, group=lambda r: r.schema, reference=lambda r: r.reference)


# --------------------------------------------------------------------------- summaries
@dataclass
class SchemaRow(harness.Record):
    """Medians over the repetitions of one (schema, config), with its ratios."""

    schema: str
    config: str
    runs: int = 0
    tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None  # after the first target forward
    wall_s: float | None = None
    new_tokens: float | None = None
    target_forwards: float | None = None
    tau: float | None = None
    acceptance_rate: float | None = None
    grammar_us_per_mask: float | None = None
    grammar_us_per_token: float | None = None
    complete: int = 0  # runs that stopped on EOS
    valid: int = 0  # ... and validate against the schema
    reference: str | None = None  # the config whose greedy output this one must equal
    identical: bool | None = None
    speedup_vs_hf_xgrammar: float | None = None
    speedup_vs_best_hf: float | None = None  # over the fastest HF + grammar config on the schema
    ratio_vs_unconstrained: float | None = None  # over the same proposer without a grammar
    decode_ratio_vs_unconstrained: float | None = None


@dataclass
class ConfigRow(harness.Record):
    """One config over every schema: geometric means of rates and ratios, means of counts."""

    config: str
    schemas: int = 0
    tokens_per_s: float | None = None
    tau: float | None = None
    speedup_vs_hf_xgrammar: float | None = None
    speedup_vs_best_hf: float | None = None
    unconstrained: str | None = None
    ratio_vs_unconstrained: float | None = None
    decode_tokens_per_s: float | None = None
    decode_ratio_vs_unconstrained: float | None = None
    mean_target_forwards: float | None = None
    mean_new_tokens: float | None = None
    acceptance_rate: float | None = None
    grammar_us_per_mask: float | None = None
    grammar_us_per_token: float | None = None
    runs: int = 0
    complete: int = 0
    valid: int = 0
    reference: str | None = None
    identical: bool | None = None


@dataclass
class JumpSaving(harness.Record):
    """Target forwards per schema of a config without vs with jump-forward (same outputs under greedy)."""

    with_jump: str
    without: str
    schemas: int = 0
    mean_forwards_without: float | None = None
    mean_forwards_with: float | None = None
    mean_saved: float | None = None
    saved_fraction: float | None = None
    speedup: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JumpSaving:
        if "with" in data:  # files written before the record was typed
            data = {**data, "with_jump": data["with"]}
        return super().from_dict(data)


def per_schema_rows(runs: Sequence[GrammarRun], configs: Sequence[str]) -> list[SchemaRow]:
    """Medians per (schema, config), with ratios against the HF baselines and the unconstrained strategy."""
    rows = []
    for schema in dict.fromkeys(r.schema for r in runs):
        for config in configs:
            group = [r for r in runs if (r.schema, r.config) == (schema, config)]
            if not group:
                continue
            specs = [r.spec for r in group if r.spec is not None]
            identical = [r.identical for r in group if r.identical is not None]
            rows.append(
                SchemaRow(
                    schema=schema,
                    config=config,
                    runs=len(group),
                    tokens_per_s=harness.median(r.tokens_per_s for r in group),
                    decode_tokens_per_s=harness.median(r.decode_tokens_per_s for r in group),
                    wall_s=harness.median(r.wall_s for r in group),
                    new_tokens=harness.median(r.new_tokens for r in group),
                    target_forwards=harness.median(r.target_forwards for r in group),
                    tau=harness.median(r.tau for r in group),
                    acceptance_rate=harness.median(s["acceptance_rate"] for s in specs),
                    grammar_us_per_mask=harness.median(r.grammar_us_per_mask for r in group),
                    grammar_us_per_token=harness.median(r.grammar_us_per_token for r in group),
                    complete=sum(r.complete for r in group),
                    valid=sum(r.valid for r in group),
                    reference=group[0].reference,
                    identical=all(identical) if identical else None,
                )
            )
    by_key = {(r.schema, r.config): r for r in rows}
    for row in rows:
        base = by_key.get((row.schema, BASELINE))
        free = by_key.get((row.schema, UNCONSTRAINED_OF.get(row.config, "")))
        hf = [by_key[k].tokens_per_s for c in (BASELINE, *HF_SPECULATIVE_GRAMMAR) if (k := (row.schema, c)) in by_key]
        row.speedup_vs_hf_xgrammar = harness.ratio(row.tokens_per_s, base.tokens_per_s if base else None)
        row.speedup_vs_best_hf = harness.ratio(row.tokens_per_s, max(hf) if hf else None)
        row.ratio_vs_unconstrained = harness.ratio(row.tokens_per_s, free.tokens_per_s if free else None)
        row.decode_ratio_vs_unconstrained = harness.ratio(
            row.decode_tokens_per_s, free.decode_tokens_per_s if free else None
        )
    return rows


def config_rows(rows: Sequence[SchemaRow], runs: Sequence[GrammarRun], configs: Sequence[str]) -> list[ConfigRow]:
    """Per config over schemas: geomeans of rates and ratios, means of forwards and grammar time, counts."""
    out = []
    for config in configs:
        group = [r for r in rows if r.config == config]
        timed = [r for r in runs if r.config == config]
        if not group:
            continue
        identical = [r.identical for r in group if r.identical is not None]
        out.append(
            ConfigRow(
                config=config,
                schemas=len(group),
                tokens_per_s=harness.geomean(r.tokens_per_s for r in group),
                tau=harness.geomean(r.tau for r in group),
                speedup_vs_hf_xgrammar=harness.geomean(r.speedup_vs_hf_xgrammar for r in group),
                speedup_vs_best_hf=harness.geomean(r.speedup_vs_best_hf for r in group),
                unconstrained=UNCONSTRAINED_OF.get(config),
                ratio_vs_unconstrained=harness.geomean(r.ratio_vs_unconstrained for r in group),
                decode_tokens_per_s=harness.geomean(r.decode_tokens_per_s for r in group),
                decode_ratio_vs_unconstrained=harness.geomean(r.decode_ratio_vs_unconstrained for r in group),
                mean_target_forwards=harness.mean(r.target_forwards for r in group),
                mean_new_tokens=harness.mean(r.new_tokens for r in group),
                acceptance_rate=harness.mean(r.acceptance_rate for r in group),
                grammar_us_per_mask=harness.mean(r.grammar_us_per_mask for r in group),
                grammar_us_per_token=harness.mean(r.grammar_us_per_token for r in group),
                runs=len(timed),
                complete=sum(r.complete for r in timed),
                valid=sum(r.valid for r in timed),
                reference=group[0].reference,
                identical=all(identical) if identical else None,
            )
        )
    return out


def jump_forward_savings(rows: Sequence[SchemaRow]) -> list[JumpSaving]:
    """Target forwards per schema without vs with jump-forward (same outputs under greedy)."""
    out = []
    for with_jump, without in JUMP_PAIRS.items():
        pairs = [
            (a, b) for a in rows if a.config == without for b in rows if b.config == with_jump and b.schema == a.schema
        ]
        if not pairs:
            continue
        before = statistics.fmean(a.target_forwards for a, _ in pairs)
        after = statistics.fmean(b.target_forwards for _, b in pairs)
        out.append(
            JumpSaving(
                with_jump=with_jump,
                without=without,
                schemas=len(pairs),
                mean_forwards_without=before,
                mean_forwards_with=after,
                mean_saved=before - after,
                saved_fraction=(before - after) / before if before else None,
                speedup=harness.geomean(b.tokens_per_s / a.tokens_per_s for a, b in pairs if a.tokens_per_s),
            )
        )
    return out


def summarize(runs: Sequence[GrammarRun], configs: Sequence[str]) -> dict[str, Any]:
    """The results file's "summary": per config, jump-forward savings, per schema (records as dicts)."""
    rows = per_schema_rows(runs, configs)
    return {
        "configs": [dataclasses.asdict(c) for c in config_rows(rows, runs, configs)],
        "jump_forward": [dataclasses.asdict(j) for j in jump_forward_savings(rows)],
        "per_schema": [dataclasses.asdict(r) for r in rows],
    }


def read_summary(results: dict[str, Any]) -> tuple[list[ConfigRow], list[JumpSaving], list[SchemaRow]]:
    summary = results["summary"]
    return (
        [ConfigRow.from_dict(c) for c in summary["configs"]],
        [JumpSaving.from_dict(j) for j in summary["jump_forward"]],
        [SchemaRow.from_dict(r) for r in summary["per_schema"]],
    )


# --------------------------------------------------------------------------- results file
def describe_cases(workload: GrammarWorkload) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "group": c.group,
            "schema": compact(c.schema),
            "schema_chars": len(compact(c.schema)),
            "instance": c.instance,
            "prompt_tokens": int(c.input_ids.shape[1]),
            "prompt_text": c.text,
            "prompt_ids": None if c.text else c.input_ids[0].tolist(),
        }
        for c in workload.cases
    ]


def build_results(
    name: str,
    command: str,
    settings: GrammarBenchSettings,
    workload: GrammarWorkload,
    timed: tuple[list[GrammarRun], list[GrammarRun]],
    load: dict[str, Any],
) -> dict[str, Any]:
    """The JSON written to benchmarks/results/: settings and environment first, every run last."""
    warmups, runs = timed
    checked = [r.identical for r in runs if r.identical is not None]
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command,
        "machine": {**environment.machine_info(settings.threads), "load_average": load},
        "settings": dataclasses.asdict(settings),
        "strategies": {c: s for c, s in strategy_settings(settings).items() if c in settings.configs},
        "generation": {
            "do_sample": False,
            "max_new_tokens": settings.max_new_tokens,
            "eos_token_id": workload.eos_token_ids,
            "pad_token_id": workload.pad_token_id,
        },
        "models": harness.jsonable(workload.models),
        "workload": {
            "data_dir": workload.data_dir,
            "selection_rule": None
            if settings.tiny
            else SELECTION_RULE.format(
                max_schema=settings.max_schema_chars, max_instance=settings.max_instance_chars
            ),
            "system_prompt": None if settings.tiny else SYSTEM_PROMPT,
            "user_template": None if settings.tiny else USER_TEMPLATE,
            "schemas": describe_cases(workload),
        },
        "all_identical": all(checked) if checked else None,
        "summary": summarize(runs, settings.configs),
        "warmup": [dataclasses.asdict(r) for r in warmups],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def mismatches(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["identical"] is False]


# --------------------------------------------------------------------------- markdown and console
SUMMARY_HEADER = (
    "config",
    "tok/s",
    "tau",
    "x hf_xgrammar",
    "x best HF + grammar",
    "x unconstrained",
    "decode tok/s",
    "decode x unconstrained",
    "target fwd / schema",
    "fwd saved by jump",
    "accept",
    "grammar µs/token",
    "complete & valid",
    "identical",
)
PER_SCHEMA_HEADER = (
    "schema",
    "config",
    "tok/s",
    "tau",
    "new tokens",
    "target fwd",
    "x hf_xgrammar",
    "x best HF + grammar",
    "accept",
    "grammar µs/token",
    "valid",
    "identical",
)


def summary_table(results: dict[str, Any]) -> list[list[str]]:
    configs, jumps, _ = read_summary(results)
    jump = {j.with_jump: j for j in jumps}
    return [
        [
            c.config,
            markdown.num(c.tokens_per_s),
            markdown.num(c.tau),
            markdown.times(c.speedup_vs_hf_xgrammar),
            markdown.times(c.speedup_vs_best_hf),
            f"{markdown.times(c.ratio_vs_unconstrained)} ({c.unconstrained})" if c.unconstrained else "–",
            markdown.num(c.decode_tokens_per_s),
            markdown.times(c.decode_ratio_vs_unconstrained) if c.unconstrained else "–",
            markdown.num(c.mean_target_forwards, 1),
            _saved(jump.get(c.config)),
            markdown.num(c.acceptance_rate),
            markdown.num(c.grammar_us_per_token, 1),
            f"{c.valid}/{c.runs} ({c.complete} complete)",
            markdown.yes_no(c.identical),
        ]
        for c in configs
    ]


def _saved(jump: JumpSaving | None) -> str:
    if jump is None or jump.mean_saved is None:
        return "–"
    return f"{jump.mean_saved:.1f} ({100 * (jump.saved_fraction or 0):.0f} %)"


def per_schema_table(results: dict[str, Any]) -> list[list[str]]:
    return [_schema_cells(r.schema, r, r.new_tokens, r.target_forwards, f"{r.valid}/{r.runs}") for r in read_summary(results)[2]]


def _schema_cells(label: str, r: SchemaRow | ConfigRow, new_tokens, forwards, valid: str) -> list[str]:
    """One PER_SCHEMA_HEADER row (a schema's medians, or a config's means on the console)."""
    return [
        label,
        r.config,
        markdown.num(r.tokens_per_s),
        markdown.num(r.tau),
        markdown.num(new_tokens, 0),
        markdown.num(forwards, 0 if isinstance(r, SchemaRow) else 1),
        markdown.times(r.speedup_vs_hf_xgrammar),
        markdown.times(r.speedup_vs_best_hf),
        markdown.num(r.acceptance_rate),
        markdown.num(r.grammar_us_per_token, 1),
        valid,
        markdown.yes_no(r.identical),
    ]


def _strategy_text(value: dict[str, Any]) -> str:
    params = markdown.inline(value)
    return f"{value['class']}({params})" if params else value["class"]


def identity_line(results: dict[str, Any]) -> str:
    verdict = results["all_identical"]
    if verdict is None:
        return "Greedy identity: not checked (no reference config run)."
    if verdict:
        return (
            "Greedy identity: every grammar config's output equals hf_xgrammar's, and every unconstrained "
            "config's equals the first unconstrained config's, token for token."
        )
    bad = sorted({f"{r['config']}/{r['schema']} vs {r['reference']}" for r in mismatches(results)})
    return f"**WARNING: greedy outputs differ: {', '.join(bad)}.**"


def render_section(results: dict[str, Any], key: str) -> str:
    """One BENCHMARKS.md section between bench's begin/end markers, so re-rendering replaces it."""
    s, w = results["settings"], results["workload"]
    schemas = ", ".join(
        f"{c['name']} ({c['schema_chars']} chars, {c['prompt_tokens']} prompt tokens)" for c in w["schemas"]
    )
    lines = [
        markdown.SECTION_BEGIN.format(key=key),
        f"## {results['name']}",
        "",
        f"Command: `{results['command']}`",
        "",
        *environment.environment_lines(results),
        f"- Greedy, max_new_tokens {s['max_new_tokens']}, repeats {s['repeats']} (medians), "
        f"{len(w['schemas'])} JSON Schemas, JSONSchema(any_whitespace=False): {schemas}",
        "- Strategies: " + "; ".join(f"{c}: {_strategy_text(v)}" for c, v in results["strategies"].items()),
    ]
    if w.get("selection_rule"):
        lines += [f"- Schemas: {w['selection_rule']}"]
        lines += [
            '- Prompt (chat template): system "'
            + w["system_prompt"]
            + '", user '
            + json.dumps(w["user_template"])
        ]
    lines += [
        "",
        "hf_xgrammar is plain `generate` with `xgrammar.contrib.hf.LogitsProcessor` (its matchers stopping "
        "on the "
        "call's EOS ids, as hfspec's do). hf_assisted_grammar and hf_prompt_lookup_grammar are HF's own "
        "assisted generation (the draft model) and prompt lookup with `hfspec.GrammarLogitsProcessor` "
        "(xgrammar's processor raises there: it cannot roll back); \"x best HF + grammar\" is tok/s over the "
        "fastest of those three on the same schema. hfspec_grammar, _draft and _lookup pass "
        "`jump_forward=False`; the _jump configs jump forward (the default under `grammar=`). "
        "hfspec_draft and hfspec_lookup are the same strategies without a "
        'grammar. tau = new tokens / target forwards (forward hook, prefill included). "x unconstrained" is '
        "tok/s over the unconstrained config with the same proposer (their outputs differ). "
        '"decode tok/s" counts only what follows the first target forward (the one that reads the prompt): '
        "tokens committed later / time later, so outputs of different lengths are not weighed by prefill "
        "(not for HF's assisted generation and prompt lookup: how many tokens their first forward "
        "committed is not observable from outside). "
        '"fwd saved by jump": '
        "mean target forwards per schema saved against the same config without JumpForward. Grammar µs/token: "
        "all grammar work per new token (hfspec: SpecStats.grammar_seconds, i.e. walking drafts, filling and "
        "applying masks, checking drafts, committing, jump-forward strings; hf_xgrammar: the whole processor "
        "call, which accepts, fills and applies). "
        "Valid: stopped with EOS and `jsonschema` finds no error.",
        "",
        identity_line(results),
        "",
        "### Per config (geometric mean over schemas)",
        "",
        markdown.table(SUMMARY_HEADER, summary_table(results)),
        "",
        f"### Per schema (median of {s['repeats']} repetition(s))",
        "",
        markdown.table(PER_SCHEMA_HEADER, per_schema_table(results)),
        "",
        f"Every run: [{key}]({key})",
        markdown.SECTION_END.format(key=key),
    ]
    return "\n".join(lines) + "\n"


def print_report(results: dict[str, Any], file: Any = None) -> None:
    """Per-schema rows then the per-config summary (bold), plus a loud warning on any mismatch."""
    configs, jumps, _ = read_summary(results)
    summary = [
        _schema_cells("geomean", c, c.mean_new_tokens, c.mean_target_forwards, f"{c.valid}/{c.runs}") for c in configs
    ]
    per_schema = per_schema_table(results)
    rows = [[*r[:-1], r[-1].strip("*")] for r in per_schema + summary]
    markdown.print_table(
        f"hfspec bench-grammar: {results['name']}",
        PER_SCHEMA_HEADER,
        rows,
        left=("schema", "config"),
        bold=[i >= len(per_schema) for i in range(len(rows))],
        file=file,
    )
    for j in jumps:
        print(
            f"jump-forward: {j.with_jump} {j.mean_forwards_with:.1f} target forwards/schema vs "
            f"{j.without} {j.mean_forwards_without:.1f} (saved {j.mean_saved:.1f})",
            file=file or sys.stdout,
        )
    if results["all_identical"] is False:
        print(identity_line(results).strip("*"), file=sys.stderr)


# --------------------------------------------------------------------------- entry points
def run_benchmark(
    settings: GrammarBenchSettings, *, name: str, command: str, workload: GrammarWorkload | None = None
) -> dict[str, Any]:
    """Load (unless given), warm up, run; returns the results dict (not yet written)."""
    unknown = [c for c in settings.configs if c not in CONFIGS]
    if unknown:
        raise hfspec.ConfigurationError(f"bench-grammar configs {unknown} unknown; choose from {CONFIGS}")
    workload = workload if workload is not None else load_workload(settings)
    total = len(settings.configs) * (1 + settings.repeats * len(workload.cases))
    load = {"start": environment.load_average()}
    with harness.Progress(total, "hfspec bench-grammar", settings.progress) as progress:
        timed = benchmark(settings, workload, progress=progress)
    load["end"] = environment.load_average()
    return build_results(name, command, settings, workload, timed, load)
