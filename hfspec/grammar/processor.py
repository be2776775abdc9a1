"""``GrammarLogitsProcessor``: grammar-constrained decoding as a plain HF ``LogitsProcessor``.

Unlike ``xgrammar.contrib.hf.LogitsProcessor`` (which assumes every call appends exactly one
token and asserts so), this processor derives its state from ``input_ids`` at every call: the
matcher of each row is rolled back to the longest common prefix with what it accepted and then
fed the new tokens. That makes it correct where HF calls processors on speculative prefixes that
it may roll back (``assistant_model=``, ``prompt_lookup_num_tokens=``), where the same instance
also runs inside the assistant's own ``generate``, under beam search (rows are reordered), and
when one instance is reused for several ``generate`` calls.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

from hfspec.exceptions import GrammarError
from hfspec.grammar.bitmask import apply_bitmask_inplace
from hfspec.grammar.compile import compile_spec, resolve_tokenizer
from hfspec.grammar.specs import GrammarSpec
from hfspec.stopping import stop_token_ids

_SHIFTS = torch.arange(32, dtype=torch.int32)


@dataclass
class _Row:
    """One batch row: a matcher that accepted ``seen[:accepted]`` (the row's generated ids)."""

    matcher: Any
    seen: list[int] = field(default_factory=list)
    accepted: int = 0


@dataclass
class _Generation:
    """The state of one generation: its lm-head width, prompt ids (B, P) and one ``_Row`` per row."""

    width: int
    prompt: torch.Tensor
    rows: list[_Row]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (one token appended), at C speed
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would leave ``grammar`` (an hfspec grammar spec) at each call.

    Args:
        grammar: ``hfspec.JSONSchema``, ``JSON``, ``Regex``, ``EBNF``, ``Lark`` or ``StructuralTag``.
        tokenizer: the model's tokenizer, unless the spec carries one (they must agree).
        vocab_size: the width of the scores (lm-head width, may exceed ``len(tokenizer)``). When
            given the grammar is compiled now and every call must have this width; when None it
            is compiled lazily for the width of the first scores seen (and for any other width
            seen later, e.g. an assistant with a different lm-head width).
        eos_token_id: the stop token(s) that end the grammar; default the tokenizer's eos.
        max_states: how many generations' states to keep (see "State" below).

    State. Nothing is assumed about the order of calls: the mask of row i is always the mask of a
    matcher fed that row's generated ids from scratch. Each call ``(input_ids (B, L), scores (B, V))``
    belongs to a *generation*, keyed by (V, B, the prompt ids of every row): the prompt is the
    ``input_ids`` of the call that started it, and the generated part of row i is ``input_ids[i, P:]``.
    Each row keeps an xgrammar matcher and the generated ids it last saw; a call rolls the matcher
    back to their longest common prefix and accepts the rest (any number of ids, so a row may
    shrink, grow by one or jump). A call whose rows do not all start with a known prompt of the
    same width and batch size (shorter input, other prompt, other batch size) starts a new
    generation; when several known prompts fit, the longest wins. This covers every caller seen:
    HF plain decoding (one id appended per call), assisted decoding and prompt lookup (re-calls on
    shorter or diverging speculative prefixes), the assistant's own ``generate`` (same ids, same
    prompt: it shares the target's state), beam search (reordered rows fork the matcher of the row
    whose ids they extend instead of replaying them) and hfspec's engine (rows outside the group
    being processed ride along with truncated or padded prefixes: they only roll back or go dead).
    States live in a small LRU dict (``max_states``) rather than one slot so that a target and an
    assistant with different lm-head widths, or interleaved generations, do not evict each other;
    one instance can serve many ``generate`` calls, since a call with a known prompt just rolls back
    to it. The one thing the ids cannot tell: a new call whose prompt *extends* an earlier prompt of
    the same batch size (the next turn of a chat that contains the previous output) looks like that
    generation continuing, so its prompt tail would count as output. Use a fresh processor per
    ``generate`` call in that case, or call ``reset()`` in between.

    Finished rows: once a row's matcher accepted a stop token, only stop tokens and the pad token
    are allowed, so finished rows of a batch keep padding (HF replaces their token by pad anyway,
    and sampling never sees an all ``-inf`` row). Dead rows: a generated id the grammar rejects
    (a token forced by another processor, or HF's speculative candidates past an ungrammatical
    draft) never raises; from that position on the row allows only stop and pad tokens until a
    later call rolls it back to a grammatical prefix. Ending such a row is the least harmful
    choice: speculative positions past a rejected candidate are discarded by HF whatever their
    mask, while a real row that left the grammar would only emit more invalid text if everything
    were allowed.

    The processor does not validate what the mask cannot enforce (``JSONSchema`` keywords listed by
    ``hfspec.grammar.unenforced``); check finished outputs with ``grammar.parse`` /
    ``grammar.validation_errors``. A draft with a different tokenizer (HF universal assisted
    decoding) sees token ids of another vocabulary and is not supported.
    """

    def __init__(
        self,
        grammar: GrammarSpec,
        tokenizer: Any = None,
        *,
        vocab_size: int | None = None,
        eos_token_id: int | list[int] | torch.Tensor | None = None,
        max_states: int = 8,
    ) -> None:
        if not isinstance(grammar, GrammarSpec):
            raise GrammarError(
                "GrammarLogitsProcessor needs an hfspec grammar spec (hfspec.JSONSchema, Regex, EBNF, Lark, "
                f"StructuralTag, JSON); got {type(grammar).__name__}."
            )
        self.grammar = grammar
        self.tokenizer = resolve_tokenizer(grammar, tokenizer)
        self.stop_token_ids = stop_token_ids(eos_token_id, self.tokenizer)
        if not self.stop_token_ids:
            raise GrammarError(
                "GrammarLogitsProcessor needs a stop token: "
                + ("the tokenizer has no eos_token_id; pass eos_token_id=." if eos_token_id is None
                   else f"eos_token_id={eos_token_id!r} names none.")
            )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = None if pad is None else int(pad)
        if max_states < 1:
            raise GrammarError(f"max_states must be at least 1, got {max_states}.")
        self.max_states = max_states
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self._compiled: dict[int, Any] = {}
        self._end_bits: dict[int, torch.Tensor] = {}
        self._states: OrderedDict[int, _Generation] = OrderedDict()
        self._next_key = 0
        self.rolled_back_tokens = 0  # tokens undone by rollback over this instance's life (for tests/stats)
        if self.vocab_size is not None:
            self._compiled_for(self.vocab_size)

    # ------------------------------------------------------------------ public
    def reset(self) -> None:
        """Forget every generation (compiled grammars are kept)."""
        self._states.clear()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise GrammarError(
                "GrammarLogitsProcessor expects input_ids (batch, length) and scores (batch, vocab) with the "
                f"same batch size; got {tuple(input_ids.shape)} and {tuple(scores.shape)}."
            )
        width = int(scores.shape[-1])
        compiled = self._compiled_for(width)
        ids = input_ids.detach().to("cpu", torch.long)
        gen = self._find_generation(ids, width)
        if gen is None:
            gen = self._new_generation(ids, width, compiled)
        generated = ids[:, gen.prompt.shape[1] :].tolist()
        self._adopt_rows(gen, generated)
        bitmask = self._xgr.allocate_token_bitmask(len(gen.rows), width)
        for index, (row, tokens) in enumerate(zip(gen.rows, generated, strict=True)):
            self._sync(row, tokens, width)
            if row.accepted == len(tokens) and not row.matcher.is_terminated():
                row.matcher.fill_next_token_bitmask(bitmask, index)
            else:  # finished (accepted a stop token) or dead (a rejected id): end the row
                bitmask[index] = self._end_bits[width]
        return self._apply(scores, bitmask)

    # ------------------------------------------------------------------ state
    def _sync(self, row: _Row, tokens: list[int], width: int) -> None:
        """Bring ``row.matcher`` to ``tokens``: roll back to the common prefix, accept the rest."""
        common = _common_prefix(row.seen, tokens)
        if common < row.accepted:
            row.matcher.rollback(row.accepted - common)
            self.rolled_back_tokens += row.accepted - common
            row.accepted = common
        row.seen = tokens
        if common > row.accepted:
            return  # the ids past `accepted` are the same as before: still finished or dead
        matcher = row.matcher
        for token in tokens[row.accepted :]:
            if matcher.is_terminated() or not 0 <= token < width or not matcher.accept_token(token):
                break
            row.accepted += 1

    def _adopt_rows(self, gen: _Generation, generated: list[list[int]]) -> None:
        """Beam search reorders rows: a row that no longer extends its own state forks the row it
        came from (the one sharing the longest prefix), before any row of this call moves."""
        sources: dict[int, int] = {}
        for i, tokens in enumerate(generated):
            own = _common_prefix(gen.rows[i].seen, tokens)
            if own >= len(tokens) - 1:
                continue
            best = max(range(len(gen.rows)), key=lambda j: _common_prefix(gen.rows[j].seen, tokens))
            if _common_prefix(gen.rows[best].seen, tokens) > own:
                sources[i] = best
        if sources:
            old = list(gen.rows)
            for i, j in sources.items():
                src = old[j]
                gen.rows[i] = _Row(src.matcher.fork(), list(src.seen), src.accepted)

    def _find_generation(self, ids: torch.Tensor, width: int) -> _Generation | None:
        best_key, best_len = None, -1
        for key, gen in reversed(self._states.items()):
            plen = gen.prompt.shape[1]
            if (
                gen.width != width
                or gen.prompt.shape[0] != ids.shape[0]
                or plen > ids.shape[1]
                or plen <= best_len
            ):
                continue
            if torch.equal(ids[:, :plen], gen.prompt):
                best_key, best_len = key, plen
        if best_key is None:
            return None
        self._states.move_to_end(best_key)
        return self._states[best_key]

    def _new_generation(self, ids: torch.Tensor, width: int, compiled: Any) -> _Generation:
        rows = [
            _Row(
                self._xgr.GrammarMatcher(
                    compiled, override_stop_tokens=self.stop_token_ids, max_rollback_tokens=-1
                )
            )
            for _ in range(ids.shape[0])
        ]
        gen = _Generation(width=width, prompt=ids.clone(), rows=rows)
        self._states[self._next_key] = gen
        self._next_key += 1
        while len(self._states) > self.max_states:
            self._states.popitem(last=False)
        return gen

    # ------------------------------------------------------------------ compile and mask
    @property
    def _xgr(self):
        import xgrammar

        return xgrammar

    def _compiled_for(self, width: int):
        if width in self._compiled:
            return self._compiled[width]
        if self.vocab_size is not None and width != self.vocab_size:
            raise GrammarError(
                f"GrammarLogitsProcessor was built with vocab_size={self.vocab_size} but the scores have {width} "
                "columns; pass the model's lm-head width (hfspec.engine_utils.lm_head_width) or leave vocab_size=None."
            )
        if width < len(self.tokenizer):
            raise GrammarError(
                f"The scores have {width} columns but the tokenizer has {len(self.tokenizer)} tokens: the grammar's "
                "tokenizer is not this model's. Pass the model's own tokenizer."
            )
        bad = [t for t in self.stop_token_ids if not 0 <= t < width]
        if bad:
            raise GrammarError(f"Stop token ids {bad} lie outside the vocabulary (width {width}).")
        compiled = compile_spec(self.grammar, self.tokenizer, width)
        allowed = set(self.stop_token_ids)
        if self.pad_token_id is not None and 0 <= self.pad_token_id < width:
            allowed.add(self.pad_token_id)
        words = [0] * ((width + 31) // 32)
        for token in allowed:
            words[token // 32] |= 1 << (token % 32)
        self._end_bits[width] = torch.tensor(
            [w - (1 << 32) if w >= 1 << 31 else w for w in words], dtype=torch.int32
        )
        self._compiled[width] = compiled
        return compiled

    def _apply(self, scores: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
        """A masked copy of ``scores`` (disallowed -> -inf) in the input dtype; the input is untouched."""
        if scores.dtype in (torch.float32, torch.bfloat16, torch.float16) and scores.device.type == "cpu":
            out = scores.clone()
            apply_bitmask_inplace(out, bitmask)  # touches only the ids that change (grammar/bitmask.py)
            return out
        # Other dtypes/devices: unpack the bits and mask in place of a float32 round trip, which
        # would round float64 scores.
        bits = bitmask.to(scores.device)
        allowed = (bits.unsqueeze(-1) >> _SHIFTS.to(scores.device)) & 1
        allowed = allowed.reshape(bits.shape[0], -1)[:, : scores.shape[-1]].bool()
        return scores.masked_fill(~allowed, float("-inf"))
