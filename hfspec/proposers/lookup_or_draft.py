"""Copy when copying works, draft otherwise: a prompt lookup and a draft model behind one strategy.

Why (measured on the real pair, BENCHMARKS.md#lowering): a compiled draft step costs about 7 × 58 ms
of draft forwards plus the 350 ms verify; a lookup step costs the verify alone. On a copy-heavy
edit the lookup's drafts were all accepted (τ 5.6) and it finished in 15.5 s against the draft's
21.3 s; on code and JSON extraction its drafts were mostly wrong (acceptance 10–35 %) and the draft
model won. Neither is best everywhere, and which one is best changes within an answer.

The rule: every step the lookup proposes (microseconds). Its proposal is used when every drafting
row has at least ``min_tokens`` of it and the lookup's recent *agreement* is at least
``min_agreement``; otherwise the draft model drafts. Agreement is measured in the shadow on every
step, used or not: the share of the lookup's proposal that matches what the step committed
(exponential average with weight ``1/2`` on the latest step). So the lookup earns its turns by
predicting the committed text, at no cost.

Exact: each step's proposal is the lookup's (deterministic, one-hot rule) or the draft's (its exact
q), and which one is chosen depends only on tokens already committed. The draft model catches up
on the tokens it did not see when it next drafts (one forward over them).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.base import Proposal, ProposerSession, SessionContext, StepView
from hfspec.proposers.draft_model import DraftModel
from hfspec.proposers.prompt_lookup import PromptLookup
from hfspec.step import StepResult


class LookupOrDraft:
    """Propose the prompt lookup's continuation when it has been predicting well, else draft.

    Args:
        lookup: a ``PromptLookup`` (chains only: ``num_branches=1``).
        draft: a ``DraftModel`` (chains only: no ``tree=``).
        min_tokens: the lookup must propose at least this many tokens in every drafting row.
        min_agreement: the lookup's shadow agreement (module docstring) must be at least this, in [0, 1].
    """

    def __init__(
        self, lookup: PromptLookup, draft: DraftModel, *, min_tokens: int = 3, min_agreement: float = 0.75
    ) -> None:
        if not isinstance(lookup, PromptLookup) or lookup.num_branches != 1:
            raise ConfigurationError(f"LookupOrDraft needs a PromptLookup with num_branches=1 first, got {lookup!r}.")
        if not isinstance(draft, DraftModel) or draft.tree is not None:
            raise ConfigurationError(f"LookupOrDraft needs a DraftModel without tree= second, got {draft!r}.")
        if not isinstance(min_tokens, int) or isinstance(min_tokens, bool) or min_tokens < 1:
            raise ConfigurationError(f"LookupOrDraft(min_tokens=...) must be an int >= 1, got {min_tokens!r}.")
        if not 0.0 <= min_agreement <= 1.0:
            raise ConfigurationError(f"LookupOrDraft(min_agreement=...) must be in [0, 1], got {min_agreement!r}.")
        self.lookup, self.draft = lookup, draft
        self.min_tokens, self.min_agreement = min_tokens, min_agreement

    @property
    def num_tokens(self) -> int:
        """Most drafts per step (the node budget a compiled plan needs)."""
        return max(self.lookup.num_tokens, self.draft.num_tokens)

    def __repr__(self) -> str:
        return (
            f"LookupOrDraft({self.lookup!r}, {self.draft!r}, min_tokens={self.min_tokens}, "
            f"min_agreement={self.min_agreement})"
        )

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        self.lookup.validate(target, generation_config)
        self.draft.validate(target, generation_config)

    def start(self, ctx: SessionContext) -> _LookupOrDraftSession:
        return _LookupOrDraftSession(self, self.lookup.start(ctx), self.draft.start(ctx))


def agreement(proposed: torch.Tensor, lengths: torch.Tensor, committed: torch.Tensor, kept: torch.Tensor) -> float:
    """Share of the proposal that matches what was committed, over the rows that could tell (pure).

    proposed (B, k) with ``lengths`` (B,) real tokens; committed (B, m) with ``kept`` (B,) real
    tokens. Per row: leading matches / min(lengths, kept); rows with nothing to compare are skipped.
    Returns NaN when no row could tell.
    """
    k = min(proposed.shape[1], committed.shape[1])
    judged = torch.minimum(lengths, kept).clamp_max(k)
    same = (proposed[:, :k] == committed[:, :k]) & (torch.arange(k)[None, :] < judged[:, None])
    leading = same.long().cumprod(dim=1).sum(dim=1)
    rows = judged > 0
    if not bool(rows.any()):
        return float("nan")
    return float((leading[rows].float() / judged[rows].float()).mean())


class _LookupOrDraftSession:
    def __init__(self, strategy: LookupOrDraft, lookup: ProposerSession, draft: ProposerSession) -> None:
        self.s = strategy
        self.lookup, self.draft = lookup, draft
        self.agreement = 0.0  # the lookup earns its first turn by predicting one step in the shadow
        self.shadow: Proposal | None = None
        self.steps = {"lookup": 0, "draft": 0}  # steps each proposer served (read by tests and benchmarks)
        self.target_top_k = max(int(getattr(session, "target_top_k", 0) or 0) for session in (lookup, draft))

    def propose(self, view: StepView) -> Proposal:
        shadow = self.lookup.propose(view)
        self.shadow = shadow
        drafting = view.max_drafts > 0
        enough = bool((shadow.lengths[drafting] >= view.max_drafts[drafting].clamp_max(self.s.min_tokens)).all())
        if bool(drafting.any()) and enough and self.agreement >= self.s.min_agreement:
            self.steps["lookup"] += 1
            return shadow
        self.steps["draft"] += 1
        return self.draft.propose(view)

    def on_commit(self, result: StepResult) -> None:
        if self.shadow is not None:
            seen = agreement(self.shadow.ids.cpu(), self.shadow.lengths.cpu(), result.emitted.cpu(), result.kept.cpu())
            if seen == seen:  # not NaN
                self.agreement = 0.5 * self.agreement + 0.5 * seen
        self.lookup.on_commit(result)
        self.draft.on_commit(result)
