"""Prompt lookup (LLMA / PLD): draft the tokens that followed the current suffix earlier on.

Match rule, chosen by replaying real Qwen2.5-Coder outputs (docs/design.md, "Prompt lookup"):
the longest suffix n-gram, at least ``min_ngram`` (2) long, that occurs earlier in prompt+output.
Among its occurrences, take the one that continues the previous step's copy (LLMA's copy
pointer: a model editing code copies the prompt in order), else the earliest one. One-token
matches are mostly coincidences (" =", "\\n"), and each wrong draft costs a verify position.
Proposals are deterministic, so acceptance uses the one-hot rule (exact).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.base import Proposal, SessionContext, StepView


def find_continuation(
    seq: torch.Tensor, max_ngram: int, min_ngram: int, num_tokens: int, prefer: int | None = None
) -> tuple[torch.Tensor, int | None]:
    """Tokens after the best earlier occurrence of ``seq``'s suffix, and where they start (pure).

    ``prefer``: index in ``seq`` where the previous copy would continue; used if it matches.
    Returns an empty tensor and None when no n-gram of length >= ``min_ngram`` matches.
    """
    length = seq.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        windows = seq[:-1].unfold(0, n, 1)  # every n-gram that has at least one token after it
        starts = (windows == seq[-n:]).all(dim=1).nonzero().squeeze(1)
        if starts.numel() == 0:
            continue
        sticky = prefer is not None and bool((starts == prefer - n).any())
        source = prefer if sticky else int(starts[0]) + n
        return seq[source : source + num_tokens], source
    return seq[:0], None


class PromptLookup:
    """Speculate by copying from the prompt and the output so far (no draft model).

    Args:
        num_tokens: most tokens drafted per step. 7 drafts = 8 verify positions, the cheapest
            multi-position verify measured on 2-core CPUs (docs/design.md).
        max_ngram, min_ngram: suffix lengths tried for a match, longest first.
    """

    def __init__(self, num_tokens: int = 7, *, max_ngram: int = 3, min_ngram: int = 2) -> None:
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
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
        return _LookupSession(self, ctx.batch_size)


class _LookupSession:
    """Per call: remembers, per row, where its last copy came from and how long the row was."""

    def __init__(self, strategy: PromptLookup, batch_size: int) -> None:
        self.s = strategy
        self.source: list[int | None] = [None] * batch_size
        self.length: list[int] = [0] * batch_size

    def propose(self, view: StepView) -> Proposal:
        batch = view.ids.shape[0]
        found = []
        for row in range(batch):
            start, end = int(view.starts[row]), int(view.lengths[row])
            budget = min(self.s.num_tokens, int(view.max_drafts[row]))
            # the copy pointer advances by however many tokens the row committed since last step
            prefer = None if self.source[row] is None else self.source[row] + end - self.length[row]
            tokens, source = (
                find_continuation(view.ids[row, start:end], self.s.max_ngram, self.s.min_ngram, budget, prefer)
                if budget
                else (view.ids[row, :0], None)
            )
            self.source[row], self.length[row] = source, end
            found.append(tokens)
        lengths = torch.tensor([len(f) for f in found], dtype=torch.long)
        ids = view.ids.new_zeros((batch, int(lengths.max()) if batch else 0))
        for row, tokens in enumerate(found):
            ids[row, : len(tokens)] = tokens
        return Proposal(ids=ids, lengths=lengths)

    def on_commit(self, result) -> None:
        """Nothing cached; the copy pointer is advanced from the row lengths in ``propose``."""
