"""The engine's grammar state: one xgrammar matcher per batch row, at the row's committed tokens.

Speculative positions are masked by walking a row's drafts forward (``accept_token``) and then
``rollback`` to the committed state, so the matcher is never re-parsed from scratch and never
holds an uncommitted token between engine phases. Masks go to the target distribution at every
verified position and to the draft's distribution at every drafted position (they flow through
``PrefixProcessor``), so p and q are both the masked distributions: acceptance stays exact.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hfspec.exceptions import GrammarError
from hfspec.grammar.bitmask import apply_bitmask_inplace


@dataclass
class GrammarReport:
    """Per-row outcome: complete (grammar ended with a stop token) and validation errors."""

    complete: list[bool]
    errors: list[list[str]] = field(default_factory=list)

    @property
    def bad_rows(self) -> list[int]:
        return [i for i, (ok, errs) in enumerate(zip(self.complete, self.errors, strict=True)) if not ok or errs]


class GrammarRows:
    """One matcher per row. Changes state only in ``commit``; every query rolls back what it tried."""

    def __init__(self, compiled: Any, batch_size: int, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar as xgr

        if not stop_token_ids:
            raise GrammarError("grammar= needs an end-of-sequence token id (generation_config.eos_token_id).")
        self._xgr = xgr
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.matchers = [
            xgr.GrammarMatcher(compiled, override_stop_tokens=self.stop_token_ids) for _ in range(batch_size)
        ]
        self.committed = [0] * batch_size  # tokens each matcher has accepted
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.seconds = 0.0  # all grammar work: walking, filling and applying masks, committing
        self.masks_filled = 0

    @contextlib.contextmanager
    def clock(self):
        """Add the block's wall time to ``seconds`` (benchmarks report it per token)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    @staticmethod
    def _walk(matcher: Any, tokens: list[int]) -> int:
        """Accept ``tokens`` while the grammar takes them; returns how many it took (the caller
        rolls them back)."""
        walked = 0
        for token in tokens:
            if matcher.is_terminated() or not matcher.accept_token(int(token)):
                break
            walked += 1
        return walked

    # ------------------------------------------------------------------ queries (state unchanged)
    def bitmasks(self, extra: torch.Tensor, n: int) -> torch.Tensor:
        """Bitmask (B * n, W) for n positions per row; position j's prefix is the committed tokens
        plus ``extra[i, :extra.shape[1] - (n - 1) + j]``. Positions after an ungrammatical extra token
        (which verification rejects before reaching them) and rows whose grammar ended allow all."""
        batch = len(self.matchers)
        offset = extra.shape[1] - (n - 1)
        if self._bitmask.shape[0] < batch * n:
            self._bitmask = self._xgr.allocate_token_bitmask(batch * n, self.vocab_size)
        bitmask = self._bitmask[: batch * n]
        bitmask.fill_(-1)
        tokens = extra.tolist()
        for row, matcher in enumerate(self.matchers):
            walked = self._walk(matcher, tokens[row][:offset])
            if walked == offset:
                for j in range(n):
                    if j > 0:
                        if matcher.is_terminated() or not matcher.accept_token(int(tokens[row][offset + j - 1])):
                            break
                        walked += 1
                    if matcher.is_terminated():
                        break
                    matcher.fill_next_token_bitmask(bitmask, row * n + j)
                    self.masks_filled += 1
            if walked:
                matcher.rollback(walked)
        if bool(bitmask.eq(0).all(dim=1).any()):
            raise GrammarError(
                "The grammar reached a state that no token of this tokenizer can continue "
                "(it needs characters the vocabulary cannot spell)."
            )
        return bitmask

    def apply(self, scores: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """Mask float32 scores (B, n, V) in place (positions as in ``bitmasks``) and return them."""
        b, n, v = scores.shape
        if v != self.vocab_size:
            raise GrammarError(f"internal: scores are {v} wide, the grammar was compiled for {self.vocab_size}")
        flat = scores.reshape(b * n, v)
        with self.clock():
            apply_bitmask_inplace(flat, self.bitmasks(extra, n).to(flat.device))
        return flat.reshape(b, n, v)

    def grammatical_prefix(self, drafts: torch.Tensor, num_drafts: torch.Tensor) -> torch.Tensor:
        """(B,) how many leading drafts of each row the grammar accepts (the rest would be rejected)."""
        out = torch.zeros_like(num_drafts)
        tokens = drafts.tolist()
        with self.clock():
            for row, matcher in enumerate(self.matchers):
                walked = self._walk(matcher, tokens[row][: int(num_drafts[row])])
                if walked:
                    matcher.rollback(walked)
                out[row] = walked
        return out

    def jump_forward_string(self, row: int) -> str:
        """The text the grammar forces next for ``row`` ('' if none)."""
        matcher = self.matchers[row]
        with self.clock():
            return "" if matcher.is_terminated() else matcher.find_jump_forward_string()

    @contextlib.contextmanager
    def assuming(self, tokens: list[list[int]], *, strict: bool = True):
        """Within the block, row i's matcher also holds ``tokens[i]`` (e.g. forced tokens a draft
        model continues from); rolled back on exit. Blocks nest (inner ones roll back first).

        Yields how many of each row's tokens the matcher took. ``strict`` raises GrammarError on a
        token the grammar refuses; otherwise the row stops there (e.g. after a drafted EOS)."""
        walked = [0] * len(self.matchers)
        try:
            with self.clock():
                for row, matcher in enumerate(self.matchers):
                    walked[row] = self._walk(matcher, tokens[row])
                    if strict and walked[row] < len(tokens[row]):
                        token = tokens[row][walked[row]]
                        raise GrammarError(f"internal: assumed token {token} is not grammatical in row {row}")
            yield walked
        finally:
            with self.clock():
                for row, matcher in enumerate(self.matchers):
                    if walked[row]:
                        matcher.rollback(walked[row])

    def terminated(self, row: int) -> bool:
        """Whether ``row``'s grammar has ended (a stop token was accepted)."""
        return self.matchers[row].is_terminated()

    # ------------------------------------------------------------------ state changes
    def commit(self, tokens: torch.Tensor, counts: torch.Tensor) -> None:
        """Accept tokens[i, :counts[i]] (the engine's committed tokens) into row i's matcher."""
        with self.clock():
            self._commit(tokens.tolist(), counts.tolist())

    def _commit(self, rows: list[list[int]], counts: list[int]) -> None:
        for row, count in enumerate(counts):
            matcher = self.matchers[row]
            for token in rows[row][:count]:
                if matcher.is_terminated():
                    break
                if not matcher.accept_token(int(token)):
                    raise GrammarError(
                        f"internal: row {row} committed token {token} that its grammar rejects "
                        "(a logits processor re-enabled a masked token?)"
                    )
                self.committed[row] += 1

    def report(self, texts: list[str], validate) -> GrammarReport:
        """Completion per row, plus ``validate(text) -> list[str]`` errors for completed rows."""
        complete = [m.is_terminated() for m in self.matchers]
        errors = [validate(text) if ok else [] for ok, text in zip(complete, texts, strict=True)]
        return GrammarReport(complete=complete, errors=errors)
