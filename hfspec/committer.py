"""Commit accepted tokens: stopping criteria over the whole batch, stream, recorded scores, and
what a row does after it stopped.

Owned by the engine's loop; holds the output buffer (``ids``) and per-row lengths.

Stopping criteria see the batch as HF gives it. HF calls ``criteria(input_ids, scores)`` once per
step, with every row at the same length L, and reads one verdict per row. A speculative step
gives rows different numbers of tokens, so ``commit`` walks the new tokens position by position:
for every length L that some unfinished row reaches, it writes those rows' tokens at L - 1 and
calls the criteria ONCE with ``ids[:, :L]``, taking the verdict of exactly the rows that reached L.
- Rows already longer than L are shown their true prefix of length L: what HF showed at that step.
- Rows shorter than L (behind, or finished) hold padding there; their verdict is ignored.
- ``scores`` is what HF 5.23 passes: ``None`` unless ``output_scores`` is on, else the tuple of
  (B, V) processed scores of the steps so far (row i of step t = the score that produced row i's
  token t; zeros where the row has no token at t yet).
A row still stops at its exact token. A row that falls behind reaches an L again in a later
step, so a criterion may be called more than once for one L (never twice in one commit); keep
criteria functions of their inputs, as HF's own are.

After a row stops, HF's ``_sample`` keeps stepping it until every row has stopped, and the output
ends at the step where the last row stopped: length L* = the largest stop length. What the row
gets at those steps depends on the call (``after_stop_policy``); rows advance at different
speeds here, so a stopped row keeps being decoded until every row has stopped and it has reached
L*, and the output is cut at L*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import StoppingCriteriaList

AfterStop = Literal["idle", "pad", "continue"]


def after_stop_policy(stopping: StoppingCriteriaList, record_scores: bool) -> AfterStop:
    """What a stopped row gets at HF's later steps, read as HF's ``_sample`` reads it.

    HF pads finished rows only when some criterion has an ``eos_token_id`` attribute
    (``has_eos_stopping_criteria``). Without one, a stopped row keeps receiving real generated
    tokens up to L*: "continue". With one, it receives pad tokens; their values need no model
    work (the output buffer is pad-filled), but with ``output_scores`` HF also returns the
    processed scores it computed for the row followed by pads, so the row must be fed pads
    through the verify forward: "pad". Otherwise nothing is computed for it: "idle".
    """
    if not any(hasattr(criterion, "eos_token_id") for criterion in stopping):
        return "continue"
    return "pad" if record_scores else "idle"


@dataclass
class Committed:
    """Per-row token counts of one ``commit`` (B,) long."""

    kept: torch.Tensor  # tokens written to ``ids`` (after-stop tokens included): what the KV layout keeps
    own: torch.Tensor  # of those, the ones up to and including the row's stop: streamed, grammar-fed, counted


class Committer:
    """Appends accepted tokens position by position, applies stopping criteria to the batch, streams,
    and tracks the per-row bookkeeping after a stop (stop lengths, rows fed pads, the final length)."""

    def __init__(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        stopping: StoppingCriteriaList,
        streamer,
        record_scores: bool,
        after_stop: AfterStop = "idle",
    ):
        self.ids, self.lengths, self.stopping, self.streamer = ids, lengths, stopping, streamer
        self.after_stop: AfterStop = after_stop
        self.finished = torch.zeros(ids.shape[0], dtype=torch.bool)  # stopped: a criterion or the buffer's end
        # length at which each row stopped (valid where finished): HF's output ends at the largest
        self.stop_length = torch.zeros(ids.shape[0], dtype=torch.long)
        self.start = lengths.clone()  # prompt length per row (all equal: left padding)
        self.record_scores = record_scores
        self.steps: list[torch.Tensor] = []  # (B, V) per generated position, HF's ``scores`` layout
        self.recorded = torch.zeros(ids.shape[0], dtype=torch.long)  # positions recorded per row

    # ------------------------------------------------------------------ after-stop bookkeeping
    @property
    def final_length(self) -> int | None:
        """L*, the output length: the largest stop length, known once every row has stopped."""
        if not bool(self.finished.all()):
            return None
        return int(self.stop_length.max())

    @property
    def limit(self) -> int:
        """Length no row needs to pass: L* once known, else the buffer's end (max_length)."""
        final = self.final_length
        return final if final is not None else self.ids.shape[1]

    def working(self) -> torch.Tensor:
        """(B,) bool: rows the next step decodes. Unstopped rows; with "pad" / "continue" also
        stopped rows short of the limit (HF steps them until every row has stopped)."""
        if self.after_stop == "idle":
            return ~self.finished
        return ~self.finished | (self.lengths < self.limit)

    def forced(self) -> torch.Tensor:
        """(B,) bool: stopped rows that are fed pad tokens instead of a proposal ("pad"), so that
        their recorded scores are HF's: the processed scores of the row followed by pads."""
        if self.after_stop != "pad":
            return torch.zeros_like(self.finished)
        return self.finished & self.working()

    # ------------------------------------------------------------------ commit
    def commit(self, tokens: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor | None) -> Committed:
        """Commit tokens[i, :counts[i]] for the working rows (``scores[i, j]``: the processed
        scores that produced token j, when recorded). An unstopped row is cut at its stop unless
        ``after_stop`` is "continue"; no row is written past ``limit``."""
        base = self.lengths.tolist()  # row lengths before this commit
        current = list(base)
        done = self.finished.tolist()
        writing = self.working().tolist()
        own = [0] * len(base)
        want = [b + int(c) for b, c in zip(base, counts.tolist(), strict=True)]
        rows = [r for r in range(len(base)) if writing[r] and want[r] > base[r]]
        limit = self.limit
        first, last = min((base[r] for r in rows), default=0) + 1, max((want[r] for r in rows), default=0)
        for length in range(first, last + 1):
            written, reached = [], []
            for r in rows:
                if not writing[r] or current[r] != length - 1 or want[r] < length:
                    continue
                if length > limit:  # out of room (max_length without a criterion), or past L*
                    writing[r] = False
                    if not done[r]:
                        done[r], self.stop_length[r] = True, current[r]
                    continue
                j = length - 1 - base[r]
                self.ids[r, length - 1] = tokens[r, j]
                current[r] = length
                if self.record_scores:
                    self._record(r, length, scores[r, j])
                written.append(r)
                if not done[r]:
                    own[r] = length - base[r]
                    reached.append(r)
            if written:
                self.lengths[written] = length
            if reached:
                stop = self.stopping(self.ids[:, :length], self._scores_view(length)).reshape(-1).cpu()
                for r in reached:
                    if bool(stop[r]):
                        done[r], self.stop_length[r] = True, length
                        writing[r] = self.after_stop == "continue"
                if all(done):  # the last row stopped: L* is known, nothing is written past it
                    limit = int(self.stop_length.max())
        self.finished[:] = torch.tensor(done, dtype=torch.bool)
        kept = torch.tensor(current, dtype=counts.dtype) - torch.tensor(base, dtype=counts.dtype)
        own_t = torch.tensor(own, dtype=counts.dtype)
        if self.streamer is not None and own[0] > 0:  # row 0's own tokens only: never after-stop ones
            self.streamer.put(self.ids[0:1, base[0] : base[0] + own[0]].cpu())
        return Committed(kept=kept, own=own_t)

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

    def output_length(self) -> int:
        """Length of the returned sequences: L* (every row has stopped when the loop ends)."""
        final = self.final_length
        return final if final is not None else int(self.lengths.max())

    def stacked_scores(self) -> tuple[torch.Tensor, ...] | None:
        """HF layout: one (B, V) tensor per generated position up to L*. Stopped rows were fed on
        ("pad" / "continue") so every row is recorded; -inf marks a position no step computed."""
        if not self.record_scores:
            return None
        out = []
        for t, step in enumerate(self.steps[: self.output_length() - int(self.start.max())]):
            step = step.clone()
            step[self.recorded.to(step.device) <= t] = float("-inf")
            out.append(step)
        return tuple(out)
