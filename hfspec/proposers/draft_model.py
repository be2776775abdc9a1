"""Draft-model proposer: a small LM sharing the target's vocabulary drafts k tokens.

The draft's KV store uses the engine's slot layout (see engine.py), so after each step it is
truncated to the target's kept length and re-fed only the slots it has not seen yet; masks are
explicit (hfspec.masks), so holes, sliding windows and static caches need nothing special here.
With ``tree=TreeSpec(...)`` a step proposes a token tree instead (hfspec.proposers.tree_draft).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.engine_utils import fit_width, lm_head_width, position_ids
from hfspec.exceptions import ConfigurationError, IncompatibleDraftError
from hfspec.masks import check_attention
from hfspec.proposers.base import Proposal, SessionContext, StepView
from hfspec.proposers.pruned_head import pruned_head
from hfspec.proposers.tree_draft import TreeDraftSession, TreeSpec
from hfspec.runner import eager_runner
from hfspec.step import StepResult

__all__ = ["DraftModel", "TreeSpec"]

# Lm-head widths are often padded past the tokenizer (Qwen2.5: 151,936 vs 152,064); more
# than this relative difference means a different vocabulary, not padding.
_MAX_WIDTH_MISMATCH = 0.01


class DraftModel:
    """Speculate with a smaller model of the same vocabulary.

    Args:
        draft_model: any causal LM whose token ids mean the same as the target's.
        num_tokens: most drafts per step (>= 1). The default 7 means 8 verify positions, the
            cheapest multi-position target forward measured on 2-core CPUs (docs/design.md).
        do_sample: sample drafts from q (exact q kept for acceptance) or take argmax
            (a deterministic proposal). Default: follow the target call's ``do_sample``.
        confidence_threshold: stop drafting early in a step once every row's draft top
            probability falls below this (0 disables). Cheap drafts that are unsure waste
            a target verify position; on CPU verify cost grows with the number of drafts.
            In tree mode: frontier nodes whose path probability is below it are not expanded.
        tree: ``TreeSpec(top_k=..., depth=...)`` drafts a token tree of at most ``num_tokens``
            nodes per step (EAGLE-2 style dynamic top-k expansion by path probability, one draft
            forward per depth; hfspec.proposers.tree_draft). The tree always holds the chain a
            chain draft of that depth would propose (its *spine*: top-1 tokens, or drawn from q
            when sampling), plus the draft's top-k alternatives, deterministic (one-hot rule);
            the engine's SpecInfer walk judges the spine with q and the rest one-hot, which is
            exact. Not combinable with ``grammar=`` yet (refused at start).
            None (default): one chain of drafts per step.
        draft_vocab: draft from a subset of the vocabulary only (FR-Spec): an int N keeps the first
            N token ids (byte-level BPE vocabularies number tokens by merge order, which follows
            frequency), a sequence keeps those ids; EOS ids are always kept. The draft's LM head
            then reads N rows instead of all of them (hfspec.proposers.pruned_head: on the Qwen2.5
            0.5B the full head is 545 MB of a 2 GB step). Exact for any subset: q is the subset's
            renormalised distribution. None (default): the full head.
    """

    def __init__(
        self,
        draft_model: PreTrainedModel,
        num_tokens: int = 7,
        *,
        do_sample: bool | None = None,
        confidence_threshold: float = 0.0,
        tree: TreeSpec | None = None,
        draft_vocab: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(draft_model, PreTrainedModel):
            raise ConfigurationError(
                f"DraftModel expects a transformers PreTrainedModel, got {type(draft_model).__name__}."
            )
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise ConfigurationError(f"DraftModel(num_tokens=...) must be an int >= 1, got {num_tokens!r}.")
        if not 0.0 <= confidence_threshold < 1.0:
            raise ConfigurationError(f"confidence_threshold must be in [0, 1), got {confidence_threshold!r}.")
        if tree is not None and not isinstance(tree, TreeSpec):
            raise ConfigurationError(
                f"DraftModel(tree=...) takes an hfspec.proposers.tree_draft.TreeSpec (e.g. TreeSpec(top_k=2, depth=4)) "
                f"or None, got {tree!r}."
            )
        self.draft_model = draft_model
        self.num_tokens = num_tokens
        self.do_sample = do_sample
        self.confidence_threshold = confidence_threshold
        self.tree = tree
        self.draft_vocab = draft_vocab
        self.head = pruned_head(draft_model, draft_vocab) if draft_vocab is not None else None

    @property
    def proposes_trees(self) -> bool:
        """Whether proposals are token trees (``tree=``) rather than chains (``JumpForward`` reads it)."""
        return self.tree is not None

    def __repr__(self) -> str:
        tree = f", tree={self.tree!r}" if self.tree is not None else ""
        vocab = f", draft_vocab={self.head.num_tokens}" if self.head is not None else ""
        return f"DraftModel({type(self.draft_model).__name__}, num_tokens={self.num_tokens}{tree}{vocab})"

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        if self.draft_model.config.is_encoder_decoder:
            raise ConfigurationError("DraftModel needs a decoder-only draft model.")
        check_attention(self.draft_model)
        t_width, d_width = lm_head_width(target), lm_head_width(self.draft_model)
        if abs(t_width - d_width) > _MAX_WIDTH_MISMATCH * max(t_width, d_width):
            raise IncompatibleDraftError(
                f"Draft vocabulary width {d_width} does not match the target's {t_width}: the draft must "
                "use the target's tokenizer (widths may differ only by lm-head padding)."
            )
        for attr in ("eos_token_id", "bos_token_id"):
            t_id = getattr(target.generation_config, attr, None)
            d_id = getattr(self.draft_model.generation_config, attr, None)
            if t_id is not None and d_id is not None and _as_set(t_id).isdisjoint(_as_set(d_id)):
                raise IncompatibleDraftError(
                    f"Draft {attr}={d_id} but target {attr}={t_id}: the models use different tokenizers."
                )

    def start(self, ctx: SessionContext) -> _DraftSession | TreeDraftSession:
        if self.tree is None:
            return _DraftSession(self, ctx)
        runner = ctx.draft_runner if ctx.draft_runner is not None else eager_runner(self.draft_model, ctx.batch_size, self.head)
        sample = ctx.do_sample if self.do_sample is None else self.do_sample
        return TreeDraftSession(
            self.draft_model, self.num_tokens, self.tree, self.confidence_threshold, sample, ctx, runner
        )


def _as_set(value) -> set[int]:
    return set(value) if isinstance(value, (list, tuple)) else {value}


class _DraftSession:
    def __init__(self, strategy: DraftModel, ctx: SessionContext) -> None:
        self.model = strategy.draft_model
        self.num_tokens = strategy.num_tokens
        self.sample = ctx.do_sample if strategy.do_sample is None else strategy.do_sample
        self.threshold = strategy.confidence_threshold
        self.ctx = ctx
        self.runner = (
            ctx.draft_runner if ctx.draft_runner is not None else eager_runner(self.model, ctx.batch_size, strategy.head)
        )

    def propose(self, view: StepView) -> Proposal:
        batch = view.pending.shape[0]
        k = min(self.num_tokens, int(view.max_drafts.max()))
        if k == 0:
            return Proposal(ids=view.pending.new_zeros((batch, 0)), lengths=view.max_drafts.clone())
        store = self.runner.store
        seen = min(store.length, view.slot_tokens.shape[1])
        store.truncate(seen)
        store.valid[:, :seen] = view.slot_mask[:, :seen].bool().to(store.valid.device)  # holes the target rejected
        tokens = torch.cat([view.slot_tokens[:, seen:], view.pending[:, None]], dim=1)
        mask = torch.cat([view.slot_mask, torch.ones_like(view.pending)[:, None]], dim=1)
        positions = position_ids(mask)[:, seen:]
        valid = mask[:, seen:].bool()
        drafts: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for _ in range(k):
            logits = self.runner.chain(tokens, positions, valid, keep=1)
            logits = fit_width(logits.to(view.ids.device), self.ctx.vocab_size)
            so_far = torch.stack(drafts, 1) if drafts else view.ids[:, :0]
            scores = self.ctx.processor(view.ids, view.lengths, so_far, logits)[:, 0]
            q = torch.softmax(scores, dim=-1) if (self.sample or self.threshold > 0) else None
            token = torch.multinomial(q, 1).squeeze(1) if self.sample else scores.argmax(dim=-1)
            drafts.append(token)
            if self.sample:
                probs.append(q)
            if self.threshold > 0 and bool((q.max(dim=-1).values < self.threshold).all()):
                break
            tokens = token[:, None]
            positions = positions[:, -1:] + 1
            valid = torch.ones_like(tokens, dtype=torch.bool)
        ids = torch.stack(drafts, dim=1)
        lengths = torch.full((batch,), ids.shape[1], dtype=torch.long).minimum(view.max_drafts)
        return Proposal(ids=ids, lengths=lengths, probs=torch.stack(probs, dim=1) if probs else None)

    def on_commit(self, result: StepResult) -> None:
        """Drafts are chains: what the target kept is a prefix of what this cache holds."""
        self.runner.store.truncate(result.kept_slots)
