"""Jump-forward: text the grammar forces next (``"age": `` after ``"name": "x", ``) as free drafts.

The forced string is tokenized and proposed like any deterministic draft, so the target still
verifies every token (the one-hot rule): lossless even where the tokenization of the forced
string is not the one the model would have chosen; verification just stops there. Rows without
a forced string use the ``inner`` strategy's drafts (or none); when every row is forced, the inner
strategy drafts on from the end of the forced text. Needs ``grammar=``.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.base import Proposal, ProposerSession, SessionContext, StepView, Strategy


class JumpForward:
    """Propose grammar-forced tokens for free; otherwise fall back to ``inner`` (e.g. a DraftModel).

    Args:
        inner: the strategy for rows/steps where the grammar forces nothing (None: no drafts).
        max_tokens: most forced tokens proposed per step.
    """

    needs_grammar = True

    def __init__(self, inner: Strategy | None = None, *, max_tokens: int = 16) -> None:
        if inner is not None and (not isinstance(inner, Strategy) or isinstance(inner, JumpForward)):
            raise ConfigurationError(f"JumpForward(inner=...) must be an hfspec strategy such as DraftModel; got {inner!r}.")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ConfigurationError(f"JumpForward(max_tokens=...) must be an int >= 1, got {max_tokens!r}.")
        self.inner, self.max_tokens = inner, max_tokens

    def __repr__(self) -> str:
        return f"JumpForward({self.inner!r}, max_tokens={self.max_tokens})"

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        if self.inner is not None:
            self.inner.validate(target, generation_config)

    def start(self, ctx: SessionContext) -> _JumpSession:
        if ctx.grammar is None or ctx.tokenizer is None:
            raise ConfigurationError("JumpForward needs grammar= (and the tokenizer) in the same generate() call.")
        return _JumpSession(self, ctx, self.inner.start(ctx) if self.inner is not None else None)


class _JumpSession:
    def __init__(self, strategy: JumpForward, ctx: SessionContext, inner: ProposerSession | None) -> None:
        self.max_tokens, self.ctx, self.inner = strategy.max_tokens, ctx, inner

    def forced_tokens(self, view: StepView) -> list[list[int]]:
        """Per row, the tokens of the grammar's forced continuation (empty when nothing is forced)."""
        grammar, out = self.ctx.grammar, []
        for row in range(view.pending.shape[0]):
            budget = min(self.max_tokens, int(view.max_drafts[row]))
            text = grammar.jump_forward_string(row) if budget else ""
            out.append(self.ctx.tokenizer.encode(text, add_special_tokens=False)[:budget] if text else [])
        width = max((len(f) for f in out), default=0)
        if width:  # keep only what the grammar accepts token by token (tokenizers may add odd pieces)
            ids = torch.tensor([f + [0] * (width - len(f)) for f in out])
            keep = grammar.grammatical_prefix(ids, torch.tensor([len(f) for f in out]))
            out = [f[: int(k)] for f, k in zip(out, keep, strict=True)]
        return out

    def propose(self, view: StepView) -> Proposal:
        forced = self.forced_tokens(view)
        active = (view.max_drafts > 0).tolist()
        counts = [len(f) for f, a in zip(forced, active, strict=True) if a]
        if self.inner is None or not counts:
            return _pack(forced, view.pending)
        shared = min(counts)
        if shared == 0:  # some row has nothing forced: let the inner strategy draft every row
            return self.inner.propose(view)
        # Every active row is forced at least ``shared`` tokens: take them as drafts and let the
        # inner strategy continue after them, as if they were already committed. Its cache then
        # holds exactly the tokens that get verified, in the same slots.
        forced = [f[:shared] if a else [0] * shared for f, a in zip(forced, active, strict=True)]
        ahead = _view_after(view, torch.tensor(forced, dtype=view.pending.dtype, device=view.pending.device))
        with self.ctx.grammar.assuming([f if a else [] for f, a in zip(forced, active, strict=True)]):
            base = self.inner.propose(ahead)
        rows = [forced[i] + base.ids[i, : int(base.lengths[i])].tolist() for i in range(len(forced))]
        return _pack(rows, view.pending, base.probs, shared)

    def on_commit(self, kept_slots: int) -> None:
        if self.inner is not None:
            self.inner.on_commit(kept_slots)


def _view_after(view: StepView, forced: torch.Tensor) -> StepView:
    """The view the engine would show after committing ``forced`` (B, m) on every row."""
    batch, m = forced.shape
    ids = view.ids.clone()
    for row in range(batch):
        start = int(view.lengths[row])
        ids[row, start : start + m] = forced[row]
    ones = torch.ones_like(forced)
    return StepView(
        ids=ids,
        lengths=view.lengths + m,
        starts=view.starts,
        slot_tokens=torch.cat([view.slot_tokens, view.pending[:, None], forced[:, :-1]], dim=1),
        slot_mask=torch.cat([view.slot_mask, ones], dim=1),
        pending=forced[:, -1],
        max_drafts=(view.max_drafts - m).clamp_min(0),
    )


def _pack(rows: list[list[int]], like: torch.Tensor, inner_probs=None, shared: int = 0) -> Proposal:
    """Stack per-row drafts. With a sampled inner q, forced positions get a one-hot q (the exact
    rule for a deterministic proposal) and the inner's q follows."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    ids = like.new_zeros((len(rows), width))
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
    if inner_probs is None:
        return Proposal(ids=ids, lengths=lengths)
    vocab = inner_probs.shape[-1]
    probs = torch.nn.functional.one_hot(ids.cpu(), vocab).to(inner_probs.dtype).to(inner_probs.device)
    have = min(inner_probs.shape[1], width - shared)
    probs[:, shared : shared + have] = inner_probs[:, :have]
    return Proposal(ids=ids, lengths=lengths, probs=probs)
