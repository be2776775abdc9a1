"""The HF hook: ``custom_generate=hfspec.generate`` and the opt-in ``enable()`` patch.

transformers 5.23 prepares the generation config, processors and stopping criteria, then
calls a ``custom_generate`` callable with them; keyword arguments reach it only if its
signature names them. It does NOT forward ``streamer``, ``tokenizer`` or ``assistant_model``
to a callable: ``GenerationMixin._extract_generation_mode_kwargs`` pops ``tokenizer`` from the
call's kwargs and then, for a callable, keeps only the callable's own keyword arguments that are
still there, so the tokenizer is dropped. ``stop_strings`` is named in ``generate``'s signature so
HF hands it to hfspec instead of putting it in the generation config, where
``_get_stopping_criteria`` would raise "could not locate a tokenizer"; hfspec builds the
criterion from a tokenizer it can see (``_stop_string_criterion``). ``enable()`` wraps
``generate`` so all of them work: it builds the stop-string criterion itself and binds the
streamer and tokenizer into the callable. Everything is validated here, before the first forward.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation import GenerationMixin, StopStringCriteria
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor
from transformers.generation.utils import GENERATION_MODES_MAPPING

from hfspec.engine import SpecStats, speculative_generate
from hfspec.engine_utils import lm_head_width
from hfspec.exceptions import ConfigurationError
from hfspec.grammar import call as grammar_call
from hfspec.grammar.aligned import GrammarAligned
from hfspec.grammar.aligned.rounds import generate_aligned
from hfspec.grammar.specs import GrammarSpec
from hfspec.lowering.plan import CompiledPlan
from hfspec.proposers.base import NoDrafts, Strategy
from hfspec.proposers.jump_forward import check_jump_forward, with_jump_forward

# Model kwargs transformers itself prepares for a decoder-only call; anything else is refused
# rather than silently dropped.
# "cache" is transformers 5.24's name for past_key_values (generate hands it to custom_generate)
_KNOWN_MODEL_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep", "past_key_values", "cache"}
_SPECULATIVE_MODES = {GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE}


def generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    generation_config: GenerationConfig | None = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    assistant_strategy: Strategy | None = None,
    speculation_stats: SpecStats | None = None,
    grammar: GrammarSpec | None = None,
    tokenizer: Any = None,
    on_incomplete: str = "error",
    stop_strings: str | list[str] | None = None,
    jump_forward: bool = True,
    **model_kwargs: Any,
):
    """Decoding method for ``model.generate(..., custom_generate=hfspec.generate, assistant_strategy=...)``.

    Without ``assistant_strategy`` and ``grammar`` it runs the method plain HF generate would have
    run. ``speculation_stats`` (an ``hfspec.SpecStats``) is filled with acceptance counters.
    ``grammar`` (``hfspec.JSONSchema(...)``, ``Regex``, ...) constrains every row, with or without
    a strategy; ``on_incomplete`` ("error" | "flag") says what happens to rows that end before
    their grammar does (hfspec.grammar.call). ``stop_strings`` needs a tokenizer hfspec can see
    (module docstring): ``hfspec.enable()``, a grammar spec built with ``tokenizer=``, or
    ``functools.partial(hfspec.generate, tokenizer=tok)``. ``jump_forward`` (default True): under
    ``grammar=`` the strategy (or none) is wrapped in ``hfspec.JumpForward`` so grammar-forced text
    is proposed for free (lossless: the masked target gives it p = 1, and it is verified anyway);
    False decodes with the strategy alone and refuses an explicit ``JumpForward``.
    ``grammar=hfspec.GrammarAligned(spec, method=...)`` samples from the LM conditioned on the
    grammar instead of the locally masked law (hfspec.grammar.aligned; docs/aligned.md).
    """
    check_jump_forward(jump_forward)
    aligned = grammar if isinstance(grammar, GrammarAligned) else None
    grammar = aligned.spec if aligned is not None else grammar
    generation_config = generation_config if generation_config is not None else model.generation_config
    stopping_criteria = stopping_criteria if stopping_criteria is not None else StoppingCriteriaList()
    streamer = streamer if streamer is not None else _from_hf_caller("streamer")
    if stop_strings:
        stop = _stop_string_criterion(stop_strings, tokenizer, grammar)
        stopping_criteria = StoppingCriteriaList([*stopping_criteria, stop])
    if assistant_strategy is None and grammar is None:
        return _plain_hf(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs)
    strategy = assistant_strategy if assistant_strategy is not None else NoDrafts()
    validate_strategy(strategy)
    if grammar is not None:
        strategy = with_jump_forward(strategy, jump_forward)
    validate_call(model, input_ids, generation_config, strategy, model_kwargs, streamer, logits_processor)
    constrained = None
    if grammar is not None:
        tokenizer = tokenizer if tokenizer is not None else _from_hf_caller("tokenizer")
        constrained = grammar_call.prepare(
            grammar, tokenizer, lm_head_width(model), generation_config, input_ids.shape[0], on_incomplete
        )
    elif getattr(strategy, "needs_grammar", False):
        raise ConfigurationError(f"{strategy!r} needs grammar= in the same generate() call.")
    if aligned is not None:
        check_aligned(strategy, generation_config, streamer, stop_strings)
        aligned.bind(constrained.tokenizer, lm_head_width(model))
        constrained.rows.bitmasks(input_ids[:, :0], 1)  # raises GrammarError if no token can start the grammar
        sequences = generate_aligned(
            aligned, model, input_ids, model_kwargs.get("attention_mask"), generation_config, logits_processor,
            stopping_criteria, strategy, call=constrained, vocab_size=lm_head_width(model), stats=speculation_stats,
        )
        if not generation_config.return_dict_in_generate:
            return sequences
        rows = sequences.shape[0]
        return grammar_call.GrammarDecoderOnlyOutput(
            sequences=sequences, grammar_complete=torch.ones(rows, dtype=torch.bool),
            grammar_valid=torch.ones(rows, dtype=torch.bool), grammar_errors=[[] for _ in range(rows)],
        )
    runner = None
    if isinstance(strategy, CompiledPlan):
        strategy.validate_inputs(input_ids, generation_config)
        runner = strategy.target
    result = speculative_generate(
        model,
        input_ids,
        model_kwargs.get("attention_mask"),
        generation_config,
        logits_processor,
        stopping_criteria,
        strategy,
        streamer=streamer,
        stats=speculation_stats,
        grammar=constrained.rows if constrained is not None else None,
        tokenizer=constrained.tokenizer if constrained is not None else tokenizer,
        runner=runner,
    )
    return grammar_call.finish(constrained, result, input_ids.shape[1]) if constrained is not None else result


def check_aligned(strategy: Any, generation_config: GenerationConfig, streamer: Any, stop_strings: Any) -> None:
    """Refuse, before any model work, what grammar-aligned sampling cannot honour."""
    if not generation_config.do_sample:
        raise ConfigurationError(
            "grammar=hfspec.GrammarAligned(...) samples from P conditioned on the grammar and needs do_sample=True; "
            "greedy decoding of the aligned law (the argmax of Q) is a search problem hfspec does not solve. "
            "For greedy constrained decoding pass the plain spec as grammar=."
        )
    if generation_config.output_scores or generation_config.output_logits:
        raise ConfigurationError(
            "output_scores / output_logits are not available with GrammarAligned: rejected attempts are drawn "
            "again in later rounds, so there is no single sequence of per-step scores per row."
        )
    if streamer is not None:
        raise ConfigurationError("streamer= is not available with GrammarAligned: a rejected attempt would be streamed.")
    if stop_strings:
        raise ConfigurationError(
            "stop_strings= is not available with GrammarAligned: the grammar decides where a sample ends "
            "(the learned state assumes samples end only there or at max_new_tokens)."
        )
    if isinstance(strategy, CompiledPlan):
        raise ConfigurationError(
            "GrammarAligned cannot run through a compiled plan yet: rejected rows are drawn again as a smaller "
            "batch, and a plan is built for one batch size. Pass the plan's strategy uncompiled."
        )


def _stop_string_criterion(stop_strings, tokenizer: Any, grammar: Any) -> StopStringCriteria:
    """HF's StopStringCriteria, from the call's tokenizer or else the grammar spec's own."""
    if tokenizer is None and isinstance(grammar, GrammarSpec):
        tokenizer = grammar.tokenizer
    if tokenizer is None:
        raise ConfigurationError(
            "stop_strings= needs the tokenizer, but transformers does not pass tokenizer= to a custom_generate "
            "callable (GenerationMixin._extract_generation_mode_kwargs drops it), so hfspec cannot see it. "
            "Call hfspec.enable() and then model.generate(..., stop_strings=..., tokenizer=tok) without "
            "custom_generate=, or pass custom_generate=functools.partial(hfspec.generate, tokenizer=tok), or "
            "stopping_criteria=[transformers.StopStringCriteria(tok, stop_strings)]."
        )
    return StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings)


def check_input_ids(input_ids: Any) -> None:
    """A (batch, length) prompt with at least one row and one token."""
    if isinstance(input_ids, torch.Tensor) and (input_ids.ndim != 2 or 0 in input_ids.shape):
        raise ConfigurationError(
            f"input_ids has shape {tuple(input_ids.shape)}: assistant_strategy / grammar need a (batch, length) "
            "prompt of at least one row and one token (the engine reads the last prompt token first). "
            "Pass at least one token per row, e.g. the tokenizer's BOS token."
        )


def validate_strategy(strategy: Any) -> None:
    if not isinstance(strategy, Strategy) or isinstance(strategy, type):
        raise ConfigurationError(
            f"assistant_strategy must be an hfspec strategy instance such as hfspec.DraftModel(draft, num_tokens=5) "
            f"or hfspec.PromptLookup(); got {strategy!r} of type {type(strategy).__name__}."
        )


def validate_call(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig,
    strategy: Any,
    model_kwargs: dict[str, Any],
    streamer: Any,
    logits_processor: LogitsProcessorList | None = None,
) -> None:
    """Raise ConfigurationError for anything the speculative engine cannot honour exactly."""
    validate_strategy(strategy)
    if model.config.is_encoder_decoder:
        raise ConfigurationError("hfspec speculative decoding supports decoder-only models only.")
    check_input_ids(input_ids)
    guidance = generation_config.guidance_scale
    if (guidance is not None and guidance != 1) or any(
        isinstance(p, UnbatchedClassifierFreeGuidanceLogitsProcessor) for p in (logits_processor or [])
    ):
        raise ConfigurationError(
            f"guidance_scale={guidance} (classifier-free guidance) cannot be combined with assistant_strategy / "
            "grammar: HF's UnbatchedClassifierFreeGuidanceLogitsProcessor runs its own unconditional forward pass "
            "and keeps its own KV cache, one token per call, so it can be neither evaluated at several "
            "speculative positions nor rolled back. Drop guidance_scale (and negative_prompt_ids), or drop "
            "assistant_strategy / grammar to let plain generate run it."
        )
    if generation_config.num_beams > 1:
        raise ConfigurationError(
            f"assistant_strategy / grammar cannot be combined with beam search (num_beams={generation_config.num_beams}); "
            "use num_beams=1, or drop assistant_strategy / grammar."
        )
    mode = generation_config.get_generation_mode()
    if mode not in _SPECULATIVE_MODES:
        raise ConfigurationError(
            f"assistant_strategy supports greedy decoding and sampling; this call's settings select {mode.value}."
        )
    if generation_config.output_attentions or generation_config.output_hidden_states:
        raise ConfigurationError(
            "output_attentions / output_hidden_states are not available with assistant_strategy "
            "(speculative steps compute several positions at once); output_scores is supported."
        )
    if generation_config.output_logits:
        raise ConfigurationError("output_logits is not available with assistant_strategy; use output_scores.")
    unknown = set(model_kwargs) - _KNOWN_MODEL_KWARGS
    unknown = {k for k in unknown if model_kwargs[k] is not None}
    if unknown:
        raise ConfigurationError(
            f"assistant_strategy does not support the model inputs {sorted(unknown)} (text-only decoder models); "
            "remove them or drop assistant_strategy."
        )
    cache = next((c for k in ("past_key_values", "cache") if (c := model_kwargs.get(k)) is not None), None)
    if cache is not None and (type(cache).__name__ != "DynamicCache" or cache.get_seq_length() > 0):
        raise ConfigurationError(
            f"assistant_strategy manages its own KV cache; got past_key_values={type(cache).__name__} "
            "(pre-filled or static caches are not supported yet: drop past_key_values / cache_implementation)."
        )
    if streamer is not None and input_ids.shape[0] > 1:
        raise ConfigurationError(f"streamer= needs batch size 1 (as in HF); got batch size {input_ids.shape[0]}.")
    strategy.validate(model, generation_config)


def _plain_hf(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs):
    """Exactly what HF generate would have run without a custom_generate callable."""
    mode = generation_config.get_generation_mode()
    method_name = GENERATION_MODES_MAPPING.get(mode, "")
    if mode == GenerationMode.ASSISTED_GENERATION or not method_name.startswith("_"):
        raise ConfigurationError(
            f"custom_generate=hfspec.generate cannot run HF's {mode.value} (transformers does not forward "
            "assistant_model to callables); use assistant_strategy=hfspec.DraftModel(...) or hfspec.PromptLookup()."
        )
    method = getattr(type(model), method_name)
    return method(
        model,
        input_ids,
        logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
        stopping_criteria=stopping_criteria,
        generation_config=generation_config,
        synced_gpus=False,
        streamer=streamer,
        **model_kwargs,
    )


def _from_hf_caller(name: str) -> Any:
    """transformers hands ``streamer``/``tokenizer`` to built-in methods only; read them from its generate frame."""
    frame = sys._getframe(1)
    for _ in range(4):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == "generate" and "custom_generate" in frame.f_locals:
            return frame.f_locals.get(name)
    return None


# --------------------------------------------------------------------------- enable()/disable()
_hf_generate = None


def _generate_with_strategy(self, args, kwargs, strategy, stats, grammar, on_incomplete, jump_forward=True):
    if strategy is not None:
        validate_strategy(strategy)
    # before HF's own preamble, which indexes input_ids[:, -1] for a padded batch
    check_input_ids(args[0] if args else kwargs.get("input_ids", kwargs.get("inputs")))
    if kwargs.get("custom_generate") is generate:
        kwargs.pop("custom_generate")
    if kwargs.get("custom_generate") is not None:
        raise ConfigurationError("Pass either custom_generate= or assistant_strategy= / grammar=, not both.")
    if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens") is not None:
        raise ConfigurationError(
            "assistant_strategy replaces HF's assistant_model= / prompt_lookup_num_tokens=; pass only one of them."
        )
    stop_strings = kwargs.pop("stop_strings", None)
    tokenizer = kwargs.pop("tokenizer", None)
    config = kwargs.get("generation_config") or self.generation_config
    if getattr(config, "stop_strings", None):
        raise ConfigurationError("Set stop_strings as a generate() argument, not in the generation config.")
    if stop_strings:
        if tokenizer is None:
            raise ConfigurationError("stop_strings= needs tokenizer= in the same generate() call (as in HF).")
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
        kwargs["stopping_criteria"] = criteria
    decode = functools.partial(
        generate,
        assistant_strategy=strategy,
        speculation_stats=stats,
        streamer=kwargs.get("streamer"),
        grammar=grammar,
        tokenizer=tokenizer,
        on_incomplete=on_incomplete,
        jump_forward=jump_forward,
    )
    return _hf_generate(self, *args, custom_generate=decode, **kwargs)


def _patched_generate(
    self,
    *args,
    assistant_strategy=None,
    speculation_stats=None,
    grammar=None,
    on_incomplete="error",
    jump_forward=True,
    **kwargs,
):
    check_jump_forward(jump_forward)
    if assistant_strategy is None and grammar is None:
        return _hf_generate(self, *args, **kwargs)
    return _generate_with_strategy(
        self, args, kwargs, assistant_strategy, speculation_stats, grammar, on_incomplete, jump_forward
    )


def enable() -> None:
    """Let every ``model.generate`` (and so pipelines) accept ``assistant_strategy=``, ``grammar=`` and
    ``jump_forward=``. Idempotent."""
    global _hf_generate
    if _hf_generate is None:
        _hf_generate = GenerationMixin.generate
        GenerationMixin.generate = functools.wraps(_hf_generate)(_patched_generate)


def disable() -> None:
    """Undo ``enable()``; plain HF generate again. Idempotent."""
    global _hf_generate
    if _hf_generate is not None:
        GenerationMixin.generate = _hf_generate
        _hf_generate = None


def is_enabled() -> bool:
    return _hf_generate is not None
