"""What every proposer is: a reusable strategy that opens a per-call session.

A *strategy* (``DraftModel``, ``PromptLookup``) is configuration and can be reused across
calls and target models. ``strategy.start(ctx)`` returns a *session* holding the per-call
state (e.g. the draft model's KV cache). Each step the engine asks the session for a
``Proposal`` and afterwards tells it how far the target cache was kept (``on_commit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.processors import PrefixProcessor
from hfspec.step import StepResult


@dataclass
class Proposal:
    """Draft nodes for one step: a token tree per row (hfspec.tree), a chain when ``parents`` is None.

    Rows use only their first ``lengths[i]`` nodes. A chain's nodes are accepted as a prefix; a
    tree's accepted nodes form one root-to-node path.
    """

    ids: torch.Tensor  # (B, k) long: token of each node; padding columns hold any token id
    lengths: torch.Tensor  # (B,) long, 0 <= lengths[i] <= k: real nodes per row
    probs: torch.Tensor | None = None  # (B, k, V_target) q each node was sampled from (one-hot rows = deterministic); None = all deterministic
    parents: torch.Tensor | None = None  # (B, k) long: parent node of each node, -1 = the pending token; None = chain (j - 1)


@dataclass
class StepView:
    """Read-only view of the engine's state that a proposer drafts from."""

    ids: torch.Tensor  # (B, T) left-padded prompt followed by committed tokens (incl. pending)
    lengths: torch.Tensor  # (B,) valid length of each row of ``ids``
    starts: torch.Tensor  # (B,) index of each row's first non-pad prompt token
    slot_tokens: torch.Tensor  # (B, S) token id at each target KV-cache slot (junk where masked)
    slot_mask: torch.Tensor  # (B, S) 1 where the slot is part of the row's sequence
    pending: torch.Tensor  # (B,) last committed token, not yet in any cache
    max_drafts: torch.Tensor  # (B,) most drafts each row may take this step (0: no proposal needed, e.g. stopped rows)


@dataclass
class SessionContext:
    """Everything a session needs from the call, fixed for its lifetime."""

    target: PreTrainedModel
    generation_config: GenerationConfig
    processor: PrefixProcessor
    do_sample: bool
    vocab_size: int  # target distribution width (lm-head width of the target)
    batch_size: int
    grammar: Any = None  # hfspec.grammar.rows.GrammarRows when the call has grammar=
    tokenizer: Any = None  # the call's tokenizer, when known
    draft_runner: Any = None  # hfspec.runner.ModelRunner for the draft model (compiled plans bring one)


@runtime_checkable
class ProposerSession(Protocol):
    """Per-call proposer state. A session may also set ``target_top_k: int`` (> 0) to receive the
    target's top-k tokens at every verified column in ``StepResult.target_top`` (proposers that learn
    from verification, e.g. Token Recycling); wrappers pass on their inner sessions' wish."""

    def propose(self, view: StepView) -> Proposal: ...

    def on_commit(self, result: StepResult) -> None:
        """The step committed ``result``; the target cache now holds ``result.kept_slots`` slots
        (drop anything of yours beyond that). ``result`` also says which path was accepted."""
        ...


@runtime_checkable
class Strategy(Protocol):
    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        """Raise ConfigurationError before any model work if this strategy cannot serve the call."""
        ...

    def start(self, ctx: SessionContext) -> ProposerSession: ...


class NoDrafts:
    """The trivial strategy: never propose (plain decoding through the engine, e.g. for grammar=)."""

    def __repr__(self) -> str:
        return "NoDrafts()"

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        """Works for any target."""

    def start(self, ctx: SessionContext) -> NoDrafts:
        return self

    def propose(self, view: StepView) -> Proposal:
        return Proposal(ids=view.pending.new_zeros((view.pending.shape[0], 0)), lengths=torch.zeros_like(view.max_drafts))

    def on_commit(self, result: StepResult) -> None:
        """Nothing cached."""
