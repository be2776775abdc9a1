"""Commit accepted tokens: stopping criteria over the whole batch, stream, recorded scores.

Owned by the engine's loop; holds the output buffer (``ids``) and per-row lengths.

Stopping criteria see the batch as HF gives it. HF calls ``criteria(input_ids, scores)`` once per
step, with every row at the same length L, and reads one verdict per row. A speculative step
gives rows different numbers of tokens, so ``commit`` walks the new tokens position by position:
for every length L that some row reaches, it writes those rows' tokens at L - 1 and calls the
criteria ONCE with ``ids[:, :L]``, taking the verdict of exactly the rows that reached L.
- Rows already longer than L are shown their true prefix of length L: what HF showed at that step.
- Rows shorter than L (behind, or finished) hold padding there; their verdict is ignored.
- ``scores`` is what HF 5.23 passes: ``None`` unless ``output_scores`` is on, else the tuple of
  (B, V) processed scores of the steps so far (row i of step t = the score that produced row i's
  token t; zeros where the row has no token at t yet).
A row still stops at its exact token. A row that falls behind reaches an L again in a later
step, so a criterion may be called more than once for one L (never twice in one commit); keep
criteria functions of their inputs, as HF's own are.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteriaList


class Committer:
    """Appends accepted tokens position by position, applies stopping criteria to the batch, streams."""

    def __init__(self, ids, lengths, stopping: StoppingCriteriaList, streamer, record_scores: bool):
        self.ids, self.lengths, self.stopping, self.streamer = ids, lengths, stopping, streamer
        self.finished = torch.zeros(ids.shape[0], dtype=torch.bool)
        self.start = lengths.clone()  # prompt length per row (all equal: left padding)
        self.record_scores = record_scores
        self.steps: list[torch.Tensor] = []  # (B, V) per generated position, HF's ``scores`` layout
        self.recorded = torch.zeros(ids.shape[0], dtype=torch.long)  # positions recorded per row

    def commit(self, tokens: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        """Commit tokens[i, :counts[i]] for unfinished rows; returns how many each row kept (B,)."""
        kept = torch.zeros_like(counts)
        base = self.lengths.tolist()  # row lengths before this commit
        current = list(base)
        done = self.finished.tolist()
        want = [b + int(c) for b, c in zip(base, counts.tolist(), strict=True)]
        live = [r for r in range(len(base)) if not done[r] and want[r] > base[r]]
        cap = self.ids.shape[1]
        for length in range(min((base[r] for r in live), default=0) + 1, max((want[r] for r in live), default=0) + 1):
            reached = []
            for r in live:
                if done[r] or current[r] != length - 1 or want[r] < length:
                    continue
                if length > cap:  # out of room: max_length reached without a criterion
                    done[r] = True
                    continue
                j = length - 1 - base[r]
                self.ids[r, length - 1] = tokens[r, j]
                current[r] = length
                if self.record_scores:
                    self._record(r, length, scores[r, j])
                reached.append(r)
            if reached:
                self.lengths[reached] = length
                stop = self.stopping(self.ids[:, :length], self._scores_view(length)).reshape(-1).cpu()
                for r in reached:
                    done[r] = done[r] or bool(stop[r])
        kept[:] = torch.tensor(current, dtype=kept.dtype) - torch.tensor(base, dtype=kept.dtype)
        self.finished[:] = torch.tensor(done, dtype=torch.bool)
        if self.streamer is not None and int(kept[0]) > 0:
            end = int(self.lengths[0])
            self.streamer.put(self.ids[0:1, end - int(kept[0]) : end].cpu())
        return kept

    def _record(self, row: int, length: int, score: torch.Tensor) -> None:
        step = length - 1 - int(self.start[row])
        while len(self.steps) <= step:
            self.steps.append(torch.zeros(self.ids.shape[0], score.shape[-1], dtype=score.dtype, device=score.device))
        self.steps[step][row] = score
        self.recorded[row] = step + 1

    def _scores_view(self, length: int) -> tuple[torch.Tensor, ...] | None:
        """What HF passes criteria as ``scores`` when the batch has length ``length``."""
        if not self.record_scores:
            return None
        return tuple(self.steps[: length - int(self.start.max())])

    def stacked_scores(self) -> tuple[torch.Tensor, ...] | None:
        """HF layout: one (B, V) tensor per generated position; finished rows get -inf."""
        if not self.record_scores:
            return None
        out = []
        for t, step in enumerate(self.steps):
            step = step.clone()
            step[self.recorded.to(step.device) <= t] = float("-inf")
            out.append(step)
        return tuple(out)
