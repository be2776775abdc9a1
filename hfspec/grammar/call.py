"""One generate() call with ``grammar=``: set up matchers before any model work, report after.

A row that stops before its grammar is complete (``max_new_tokens``, a stop string) or whose
JSON violates a keyword the mask could not enforce is never passed off as valid: with
``on_incomplete="error"`` (default) the call raises ``IncompleteOutputError`` carrying the full
sequences; with ``"flag"`` it warns and, under ``return_dict_in_generate=True``, returns
``GrammarDecoderOnlyOutput`` whose ``grammar_complete``/``grammar_valid``/``grammar_errors`` say
which rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from hfspec.exceptions import ConfigurationError, GrammarError, IncompleteOutputError
from hfspec.grammar.compile import compile_spec, resolve_tokenizer
from hfspec.grammar.rows import GrammarRows
from hfspec.grammar.specs import GrammarSpec
from hfspec.stopping import stop_token_ids, until_stop

OnIncomplete = Literal["error", "flag"]


class IncompleteOutputWarning(UserWarning):
    """Some rows' outputs are incomplete or violate their schema (``on_incomplete="flag"``)."""


@dataclass
class GrammarDecoderOnlyOutput(GenerateDecoderOnlyOutput):
    """HF's output plus, per row, whether the grammar completed and schema violations found."""

    grammar_complete: torch.Tensor | None = None  # (B,) bool: the grammar ended with a stop token
    grammar_valid: torch.Tensor | None = None  # (B,) bool: complete and no schema violation
    grammar_errors: list[list[str]] | None = None  # per row, the violations found


@dataclass
class GrammarCall:
    """What a grammar-constrained call needs after validation: the spec, tokenizer and matchers."""

    spec: GrammarSpec
    tokenizer: Any
    rows: GrammarRows
    on_incomplete: OnIncomplete
    stop_token_ids: list[int]


def prepare(
    spec: Any, call_tokenizer: Any, vocab_size: int, generation_config, batch_size: int, on_incomplete: str
) -> GrammarCall:
    """Validate and compile (raises GrammarError before the model runs)."""
    if on_incomplete not in ("error", "flag"):
        raise ConfigurationError(f"on_incomplete must be 'error' or 'flag', got {on_incomplete!r}.")
    if not isinstance(spec, GrammarSpec):
        raise GrammarError(
            "grammar= must be an hfspec grammar spec (hfspec.JSONSchema, JSON, Regex, EBNF, Lark, StructuralTag, Crane) "
            "or hfspec.GrammarAligned(spec); "
            f"got {type(spec).__name__}."
        )
    if generation_config.num_beams > 1:
        raise ConfigurationError(
            f"grammar= cannot be combined with beam search (num_beams={generation_config.num_beams}); use num_beams=1."
        )
    tokenizer = resolve_tokenizer(spec, call_tokenizer)
    compiled = compile_spec(spec, tokenizer, vocab_size)
    stops = stop_token_ids(generation_config.eos_token_id, tokenizer)
    rows = GrammarRows(compiled, batch_size, vocab_size, stops)
    return GrammarCall(spec, tokenizer, rows, on_incomplete, stops)


def finish(call: GrammarCall, result, prompt_len: int):
    """Check every row; raise, or warn and flag, for rows that are incomplete or invalid."""
    sequences = result if isinstance(result, torch.Tensor) else result.sequences
    texts = [call.tokenizer.decode(until_stop(seq[prompt_len:].tolist(), call.stop_token_ids)) for seq in sequences]
    report = call.rows.report(texts, call.spec.validation_errors)
    bad = report.bad_rows
    if bad:
        reasons = [
            f"row {i}: " + ("stopped before the grammar was complete" if not report.complete[i] else
                            "; ".join(report.errors[i][:3]))
            for i in bad
        ]
        message = (
            f"{len(bad)} of {len(texts)} outputs do not conform to the grammar: " + " | ".join(reasons)
            + ". Raise max_new_tokens, or pass on_incomplete='flag' to get them back flagged."
        )
        if call.on_incomplete == "error":
            raise IncompleteOutputError(message, sequences=sequences, rows=bad)
        warnings.warn(message, IncompleteOutputWarning, stacklevel=3)
    if isinstance(result, torch.Tensor):
        return result
    return GrammarDecoderOnlyOutput(
        **{k: v for k, v in result.items()},
        grammar_complete=torch.tensor(report.complete),
        grammar_valid=torch.tensor([ok and not errs for ok, errs in zip(report.complete, report.errors, strict=True)]),
        grammar_errors=report.errors,
    )
