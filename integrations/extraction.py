"""Batch JSON extraction with hfspec: one worker object that loads its models once, then decodes batches.

Framework-free on purpose: ``hfspec.integrations.ray`` hands :class:`Extractor` to Ray Data's
``map_batches`` (an actor per worker), and the same object runs in-process in tests, so the Ray path
and a plain call share every line that touches the models.

A batch is a ``dict`` of column name to sequence (Ray Data's ``"numpy"`` batch format). The output is
the input columns plus :data:`OUTPUT_COLUMNS`. The parsed value travels as a JSON string: Arrow infers
one struct type for a whole column, which would add missing keys as nulls and turn ints into floats.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np
import torch

import hfspec
from hfspec.exceptions import ConfigurationError
from hfspec.grammar.call import IncompleteOutputWarning
from hfspec.grammar.specs import JSON, GrammarSpec, JSONSchema
from hfspec.proposers.jump_forward import check_jump_forward

ModelSource = Union[str, "os.PathLike[str]", Callable[[], Any], Any]
"""A packaged model name (``hfspec.models``), a local path, a zero-argument loader, or the object itself."""

StrategyFactory = Callable[[Any], Any]
"""Builds the strategy on the worker from the loaded draft (None without one)."""

OUTPUT_COLUMNS = ("generated_text", "parsed_json", "json_ok", "schema_valid", "grammar_complete", "errors", "num_tokens")

STRATEGIES = ("auto", "none", "draft", "prompt_lookup", "lookup_or_draft")
_TEXT_COLUMNS = ("generated_text", "parsed_json", "errors")
_NEEDS_DRAFT = ("draft", "lookup_or_draft")
_RESERVED_KWARGS = ("custom_generate", "grammar", "assistant_strategy", "jump_forward", "return_dict_in_generate",
                    "on_incomplete", "speculation_stats", "input_ids", "attention_mask")


def as_spec(schema: Any) -> GrammarSpec:
    """The grammar for ``schema``: compact JSON (fewer tokens) unless a spec with its own options is given."""
    if isinstance(schema, (JSONSchema, JSON)):
        return schema
    if isinstance(schema, GrammarSpec):
        raise ConfigurationError(
            f"the batch extractor produces JSON; got {type(schema).__name__}. Pass a pydantic model class, a JSON "
            "Schema (dict or string), hfspec.JSONSchema(...) or hfspec.JSON()."
        )
    return JSONSchema(schema, any_whitespace=False)


def portable_spec(spec: GrammarSpec) -> GrammarSpec:
    """The spec with a pydantic class replaced by its JSON Schema and no tokenizer, so it pickles to any worker
    (the class may live in a module workers cannot import, such as ``__main__`` or a test file)."""
    changes: dict[str, Any] = {"tokenizer": None}
    if isinstance(spec, JSONSchema) and spec.model_class is not None:
        changes["schema"] = spec.json_schema
    return dataclasses.replace(spec, **changes)


def check_strategy(strategy: str | StrategyFactory, has_draft: bool) -> None:
    """Refuse an unknown strategy name, or one that needs a draft without one, before any model loads."""
    if callable(strategy):
        return
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}, or pass a callable "
            "draft -> strategy (e.g. lambda draft: hfspec.PromptLookup(num_tokens=5)). Strategy objects are "
            "built on the worker so the draft model loads there, not on the driver."
        )
    if strategy in _NEEDS_DRAFT and not has_draft:
        raise ConfigurationError(
            f"strategy {strategy!r} needs a draft model: pass draft=..., or pick 'prompt_lookup' or 'none'."
        )


def build_strategy(strategy: str | StrategyFactory, draft: Any, num_tokens: int) -> Any:
    """The hfspec strategy object for a name (or the factory's result); None is grammar alone."""
    if callable(strategy):
        return strategy(draft)
    if strategy == "auto":
        strategy = "draft" if draft is not None else "none"
    if strategy == "none":
        return None
    if strategy == "prompt_lookup":
        return hfspec.PromptLookup(num_tokens=num_tokens)
    drafted = hfspec.DraftModel(draft, num_tokens=num_tokens)
    if strategy == "draft":
        return drafted
    return hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=num_tokens), drafted)  # "lookup_or_draft"


def check_tokenizer_source(target: ModelSource, tokenizer: ModelSource | None) -> None:
    """Without ``tokenizer=``, the tokenizer comes from the target's name or path; a loader cannot give one."""
    if tokenizer is None and not isinstance(target, (str, os.PathLike)):
        raise ConfigurationError(
            "tokenizer= is needed when target= is a loader or a model object (only a packaged model name or a "
            "path says where its tokenizer is)."
        )


def load_model(source: ModelSource, dtype: torch.dtype | None = None):
    """A model from a source; packaged names load in float32 (the fast CPU dtype, hfspec.models)."""
    if isinstance(source, torch.nn.Module):
        return source.eval()
    if callable(source):
        return source().eval()
    from hfspec import models

    name = os.fspath(source)
    if name in models.PACKAGED_MODELS:
        return models.load_model(name, dtype=dtype or torch.float32, progress=False)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto").eval()


def load_tokenizer(source: ModelSource):
    """A tokenizer from a source (a tokenizer object is callable: it is used as is, not called)."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(source, PreTrainedTokenizerBase):
        return source
    if callable(source):
        return source()
    from hfspec import models

    name = os.fspath(source)
    if name in models.PACKAGED_MODELS:
        return models.load_tokenizer(name)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


class Extractor:
    """Loads target, draft and tokenizer once, then turns batches of prompts into JSON records.

    Ray Data constructs one per actor (``ds.map_batches(Extractor, fn_constructor_kwargs=...)``) and
    calls it once per batch; the models stay loaded between batches. Arguments are checked before
    any model loads, so a bad call fails in seconds, not after minutes of loading.

    Args:
        schema: a pydantic model class, a JSON Schema (dict or string), ``hfspec.JSONSchema`` or ``hfspec.JSON``.
        target: the verifying model (:data:`ModelSource`); default the packaged Qwen2.5-Coder 1.5B.
        draft: the draft model, or None; default the packaged 0.5B.
        tokenizer: defaults to the target's (name or path only).
        strategy: a name from :data:`STRATEGIES` or a callable draft -> strategy. ``"auto"``: ``"draft"``
            with a draft model, else ``"none"`` (grammar alone).
        jump_forward: wrap the strategy in ``hfspec.JumpForward`` (hfspec's default under a grammar), so
            grammar-forced text costs no draft work; with a draft model, the fastest structured configuration.
        num_tokens: drafts per step for the named strategies.
        prompt_column: the column holding each record's prompt text.
        system_prompt: a system message (with a chat template) or a prefix line (without one).
        chat_template: None applies the tokenizer's template when it has one; True requires one; False never.
        max_new_tokens: per record; a record cut short is flagged ``grammar_complete=False``, not dropped.
        generate_kwargs: more ``generate()`` arguments (e.g. ``do_sample=True``); greedy by default.
        device: where the models run; None: CUDA when the worker sees a GPU, else where the loader put them.
        dtype: for names and paths (loaders choose their own).
    """

    def __init__(
        self,
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
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_strategy(strategy, draft is not None)
        check_jump_forward(jump_forward)
        check_tokenizer_source(target, tokenizer)
        check_generate_kwargs(generate_kwargs)
        spec = as_spec(schema)
        self.prompt_column = prompt_column
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.jump_forward = jump_forward
        self.generate_kwargs = {"do_sample": False, **(generate_kwargs or {})}

        self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else target)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ConfigurationError("chat_template=True but the tokenizer has no chat template.")
        self.use_template = has_template if chat_template is None else chat_template
        self.tokenizer.padding_side = "left"  # batched generate continues every row from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.spec = dataclasses.replace(spec, tokenizer=self.tokenizer)

        if device is None and torch.cuda.is_available():
            device = "cuda"
        self.target = _placed(load_model(target, dtype), device)
        self.draft = _placed(load_model(draft, dtype), device) if draft is not None else None
        self.strategy = build_strategy(strategy, self.draft, num_tokens)
        self.stop_ids = _stop_ids(self.target.generation_config.eos_token_id, self.tokenizer.eos_token_id)

    def prompts(self, batch: Mapping[str, Any]) -> list[str]:
        """The model input text of every record (chat template or system prefix applied)."""
        if self.prompt_column not in batch:
            raise ConfigurationError(
                f"no prompt column {self.prompt_column!r} in the batch; columns: {sorted(batch)}. "
                "Pass prompt_column=..., or add the column first (ds.map / ds.rename_columns)."
            )
        texts = []
        for i, value in enumerate(batch[self.prompt_column]):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(
                    f"record {i} of the batch has prompt {value!r}; every prompt must be a non-empty string "
                    "(drop such records first, e.g. ds.filter(lambda r: bool(r['prompt'])))."
                )
            texts.append(self._format(value))
        return texts

    def _format(self, prompt: str) -> str:
        if not self.use_template:
            return f"{self.system_prompt}\n\n{prompt}" if self.system_prompt else prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Decode every record of the batch; returns the input columns plus :data:`OUTPUT_COLUMNS`."""
        texts = self.prompts(batch)
        result = {key: np.asarray(value) for key, value in batch.items()}
        if not texts:
            return result | {column: np.array([], dtype=object) for column in OUTPUT_COLUMNS}
        clash = sorted(set(batch) & set(OUTPUT_COLUMNS))
        if clash:
            raise ConfigurationError(f"input columns {clash} would be overwritten by the output; rename them first.")
        inputs = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=not self.use_template)
        inputs = inputs.to(self.target.device)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteOutputWarning)  # flagged per record below
            out = self.target.generate(
                **inputs, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                custom_generate=hfspec.generate, grammar=self.spec, assistant_strategy=self.strategy,
                jump_forward=self.jump_forward, on_incomplete="flag", return_dict_in_generate=True,
                **self.generate_kwargs,
            )
        prompt_len = inputs["input_ids"].shape[1]
        rows = [self._record(seq[prompt_len:].tolist(), bool(done))
                for seq, done in zip(out.sequences, out.grammar_complete, strict=True)]
        for j, column in enumerate(OUTPUT_COLUMNS):
            values = [row[j] for row in rows]
            result[column] = np.array(values, dtype=object if column in _TEXT_COLUMNS else None)
        return result

    def _record(self, ids: list[int], complete: bool) -> tuple:
        """One record's output columns, in :data:`OUTPUT_COLUMNS` order."""
        stop = next((i for i, token in enumerate(ids) if token in self.stop_ids), len(ids))
        text = self.tokenizer.decode(ids[:stop], skip_special_tokens=True)
        errors = [] if complete else ["stopped before the grammar was complete (raise max_new_tokens)"]
        try:
            parsed = json.dumps(json.loads(text), ensure_ascii=False)
        except json.JSONDecodeError as err:
            errors.append(f"not JSON: {err}")
            return text, None, False, False, complete, "; ".join(errors), stop
        schema_errors = self.spec.validation_errors(text)  # jsonschema, formats too; [] for hfspec.JSON()
        errors += schema_errors
        return text, parsed, True, not schema_errors, complete, "; ".join(errors[:5]), stop


def check_generate_kwargs(generate_kwargs: Mapping[str, Any] | None) -> None:
    """Refuse arguments the extractor sets itself (silently overriding them would change what a column means)."""
    taken = sorted(set(generate_kwargs or {}) & set(_RESERVED_KWARGS))
    if taken:
        raise ConfigurationError(f"generate_kwargs may not set {taken}: the extractor sets them (see Extractor's args).")


def _placed(model, device):
    return model.to(device) if device is not None else model


def _stop_ids(*sources: Any) -> set[int]:
    ids: set[int] = set()
    for source in sources:
        if isinstance(source, torch.Tensor):
            source = source.flatten().tolist()
        if isinstance(source, int):
            source = [source]
        ids.update(int(i) for i in (source or []) if i is not None)
    return ids
