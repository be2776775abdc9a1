"""Apply HF logits processors at speculative positions, each with its own exact prefix.

HF processors are functions of ``(input_ids, scores)``. At verify position j of row i the
prefix is the row's committed ids plus its first j drafts (when drafting, the draft's tokens so
far); rows have different lengths, so
rows are grouped by prefix length. Processors may keep per-row state (HF's repetition
penalty holds one prompt length per row), so every call passes all B rows in order; rows
outside the group ride along with a truncated prefix and their output is discarded.
Processors known to ignore ``input_ids`` (temperature, top-k/p, ...) run once for all positions.
A grammar (``hfspec.grammar.rows.GrammarRows``) masks first, so warpers such as top-p see only
grammatical tokens, for the target and the draft alike. Grammar-aligned sampling needs the model's
own distribution P (its processors, no grammar) as well as the mask, so with ``mask_last`` the
processors run first, the grammar masks their output, and ``unmasked`` keeps what came before it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import LogitsProcessorList
from transformers.generation import logits_process as lp

# Warpers whose output depends on the scores only, never on input_ids.
_POSITION_FREE = tuple(
    getattr(lp, name)
    for name in (
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "TopHLogitsWarper",
        "MinPLogitsWarper",
        "TypicalLogitsWarper",
        "EpsilonLogitsWarper",
        "EtaLogitsWarper",
    )
    if hasattr(lp, name)
)


class PrefixProcessor:
    """Runs one ``LogitsProcessorList`` over scores whose prefixes are given per row."""

    def __init__(
        self, processors: LogitsProcessorList | None, grammar=None, *, mask_last: bool = False, reweight=None
    ) -> None:
        self.processors = processors if processors is not None else LogitsProcessorList()
        self.grammar = grammar
        self.mask_last = mask_last
        # reweight(ids, lengths, extra, scores) -> scores: applied last (aligned drafts add log ĉ)
        self.reweight = reweight
        self.position_free = all(isinstance(p, _POSITION_FREE) for p in self.processors)
        self.unmasked: torch.Tensor | None = None  # (B, n, V): the last call's scores before the mask (mask_last)
        # (B, n): log of the grammar-allowed mass of softmax(unmasked); -inf where none survived the
        # processors (those positions are given the grammar-masked raw scores, so something grammatical is drawn)
        self.log_allowed: torch.Tensor | None = None

    def __call__(
        self, ids: torch.Tensor, lengths: torch.Tensor, extra: torch.Tensor, scores: torch.Tensor
    ) -> torch.Tensor:
        """Process ``scores`` (B, n, V): position j of row i has prefix ids[i, :lengths[i]] + extra[i, :e-n+1+j]
        where e = extra.shape[1] >= n - 1 (the last position sees all of ``extra``).

        Returns float32 scores (B, n, V); the input is not modified.
        """
        scores = scores.float()
        if self.grammar is None:
            return self._process(ids, lengths, extra, scores)
        if not self.mask_last:
            return self._process(ids, lengths, extra, self.grammar.apply(scores.clone(), extra))
        masked = self._mask_last(ids, lengths, extra, scores)
        return masked if self.reweight is None else self.reweight(ids, lengths, extra, masked)

    def at_paths(self, ids: torch.Tensor, lengths: torch.Tensor, paths: list[list[list[int]]],
                 scores: torch.Tensor) -> torch.Tensor:
        """Process ``scores`` (B, F, V) where column f of row i has prefix ids[i, :lengths[i]] + paths[f][i]
        (token trees: every column its own root-to-node path, of any length per row).

        The grammar is walked along each column's path and rolled back (``GrammarRows.assuming``,
        nested inside any state the caller assumes), so every tree node is masked at its own state;
        a path the grammar stops taking (a token after an ungrammatical one, or after the stop token)
        is masked at the state where it stopped, which no acceptance rule reaches past.
        With ``mask_last``, ``unmasked`` and ``log_allowed`` end up holding every column's.
        Returns float32 scores (B, F, V); the input is not modified."""
        if self.position_free and self.grammar is None:
            return self(ids, lengths, ids[:, :0], scores)
        b, f, _ = scores.shape
        out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        unmasked = torch.empty_like(out) if self.mask_last and self.grammar is not None else None
        log_allowed = out.new_empty((b, f)) if unmasked is not None else None
        depth = max((len(path) for column in paths for path in column), default=0)
        prefix = ids.new_zeros((b, ids.shape[1] + depth))
        prefix[:, : ids.shape[1]] = ids
        for column in range(f):
            rows = paths[column]
            for row, path in enumerate(rows):
                start = int(lengths[row])
                prefix[row, start : start + len(path)] = torch.tensor(path, dtype=ids.dtype)
            new_lengths = lengths + torch.tensor([len(p) for p in rows], dtype=lengths.dtype)
            assumed = self.grammar.assuming(rows, strict=False) if self.grammar is not None else nullcontext()
            with assumed:
                out[:, column : column + 1] = self(prefix, new_lengths, ids[:, :0], scores[:, column : column + 1])
            if unmasked is not None:
                unmasked[:, column : column + 1] = self.unmasked
                log_allowed[:, column : column + 1] = self.log_allowed
        if unmasked is not None:
            self.unmasked, self.log_allowed = unmasked, log_allowed
        return out

    def _mask_last(self, ids, lengths, extra, scores) -> torch.Tensor:
        self.unmasked = self._process(ids, lengths, extra, scores)
        masked = self.grammar.apply(self.unmasked.clone(), extra)
        lse = torch.logsumexp(masked, dim=-1)
        self.log_allowed = lse - torch.logsumexp(self.unmasked, dim=-1)
        dead = ~torch.isfinite(lse)
        if bool(dead.any()):  # nothing grammatical survived the processors: any grammatical law will do
            masked[dead] = self.grammar.apply(scores.clone(), extra)[dead]
        return masked

    def _process(self, ids, lengths, extra, scores) -> torch.Tensor:
        b, n, v = scores.shape
        offset = extra.shape[1] - (n - 1)
        if len(self.processors) == 0:
            return scores
        if self.position_free:
            flat = self.processors(ids[:, :1].repeat_interleave(n, 0), scores.reshape(b * n, v))
            return flat.reshape(b, n, v)
        out = torch.empty_like(scores)
        groups: dict[int, list[int]] = {}
        for row, length in enumerate(lengths.tolist()):
            groups.setdefault(length, []).append(row)
        for length, rows in groups.items():
            idx = torch.tensor(rows, device=ids.device)
            for j in range(n):
                prefix = torch.cat([ids[:, :length], extra[:, : offset + j]], dim=1)
                out[idx, j] = self.processors(prefix, scores[:, j].clone())[idx]
        return out
