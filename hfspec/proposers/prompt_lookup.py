"""Prompt lookup (LLMA / PLD): draft the tokens that followed the last time the current suffix appeared.

Match rule (HF takes the first match from the left): the longest n-gram of the row's suffix
that occurs earlier in prompt+output; among those, the occurrence with the longest available
continuation (up to ``num_tokens``), then the most recent one. Recent text is the likeliest to
be copied again (code edits, repeated JSON keys), and a longer continuation gives the verifier
more to accept. Proposals are deterministic, so acceptance uses the one-hot rule (exact).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.base import Proposal, SessionContext, StepView


def find_continuation(seq: torch.Tensor, max_ngram: int, min_ngram: int, num_tokens: int) -> torch.Tensor:
    """Tokens following the best earlier occurrence of ``seq``'s suffix; empty if none (pure)."""
    length = seq.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        windows = seq[:-1].unfold(0, n, 1)  # every n-gram that has at least one token after it
        starts = (windows == seq[-n:]).all(dim=1).nonzero().squeeze(1)
        if starts.numel() == 0:
            continue
        available = (length - (starts + n)).clamp_max(num_tokens)
        best = int(starts[available == available.max()].max())
        return seq[best + n : best + n + num_tokens]
    return seq[:0]


class PromptLookup:
    """Speculate by copying from the prompt and the output so far (no draft model).

    Args:
        num_tokens: most tokens drafted per step.
        max_ngram: longest suffix tried for a match; shorter ones are tried down to ``min_ngram``.
    """

    def __init__(self, num_tokens: int = 10, *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ConfigurationError(f"PromptLookup(num_tokens=...) must be an int >= 1, got {num_tokens!r}.")
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise ConfigurationError(
                f"PromptLookup needs 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram!r}, max_ngram={max_ngram!r}."
            )
        self.num_tokens, self.max_ngram, self.min_ngram = num_tokens, max_ngram, min_ngram

    def __repr__(self) -> str:
        return f"PromptLookup(num_tokens={self.num_tokens}, max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        """Model-free: works for any target."""

    def start(self, ctx: SessionContext) -> _LookupSession:
        return _LookupSession(self)


class _LookupSession:
    def __init__(self, strategy: PromptLookup) -> None:
        self.s = strategy

    def propose(self, view: StepView) -> Proposal:
        batch = view.ids.shape[0]
        found = []
        for row in range(batch):
            budget = min(self.s.num_tokens, int(view.max_drafts[row]))
            seq = view.ids[row, int(view.starts[row]) : int(view.lengths[row])]
            found.append(
                find_continuation(seq, self.s.max_ngram, self.s.min_ngram, budget) if budget else seq[:0]
            )
        lengths = torch.tensor([len(f) for f in found], dtype=torch.long)
        ids = view.ids.new_zeros((batch, int(lengths.max()) if batch else 0))
        for row, tokens in enumerate(found):
            ids[row, : len(tokens)] = tokens
        return Proposal(ids=ids, lengths=lengths)

    def on_commit(self, kept_slots: int) -> None:
        """Stateless between steps."""
