"""Jump-forward: text the grammar forces next (``"age": `` after ``"name": "x", ``) as free drafts.

The forced string is tokenized and proposed like any deterministic draft, so the target still
verifies every token (the one-hot rule): lossless even where the tokenization of the forced
string is not the one the model would have chosen; verification just stops there.

With an ``inner`` strategy (e.g. a DraftModel) forced text is looked for after *every* drafted
token, not only at the start of a step: the inner strategy drafts one token at a time, the grammar
is walked along the drafts (and rolled back afterwards), and whenever it forces text that text is
appended for free and the inner strategy continues after it. A draft model then reads a forced run
in one multi-token forward instead of one forward per token, and steps carry more tokens than the
inner budget alone. A forced run's last token is left to the inner strategy when a longer token
starts with it (the model writes ``{"`` where the forced text is ``{``): a mismatch mid-step would
discard every draft after it. In a batch, only the forced tokens every drafting row shares are taken; rows
differing there draft them with the inner strategy instead. Needs ``grammar=``.

On by default: ``generate(grammar=...)`` wraps whatever strategy the call has (none included) in
``JumpForward`` (``with_jump_forward``), since forced tokens are drafts the masked target gives
p = 1, so proposing them costs nothing and changes no output. ``jump_forward=False`` opts out.
An inner strategy's ``propose`` is then called several times per step, each time with a view
that extends the previous one (``on_commit`` once per step). An inner strategy that proposes token
trees (``DraftModel(tree=...)``, ``PromptLookup(num_branches=...)``) is called once per step instead:
the forced run is the tree's trunk and the inner tree hangs from its last token.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.grammar.compile import prefix_tokens
from hfspec.proposers.base import NoDrafts, Proposal, ProposerSession, SessionContext, StepView, Strategy
from hfspec.step import StepResult
from hfspec.tree import chain_parents


class JumpForward:
    """Propose grammar-forced tokens for free; otherwise fall back to ``inner`` (e.g. a DraftModel).

    Args:
        inner: the strategy for rows/steps where the grammar forces nothing (None: no drafts).
        max_tokens: most forced tokens proposed per step (they do not count against the inner
            strategy's ``num_tokens``, which bounds its own drafts per step).
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
        # Inner drafts per step: the inner strategy's own ``num_tokens`` (16 if it has none).
        self.inner_budget = int(getattr(strategy.inner, "num_tokens", 16))
        # An inner strategy that proposes token trees gets the forced run as a trunk (``_trunk_then_tree``)
        self.tree_inner = bool(getattr(strategy.inner, "proposes_trees", False))
        self.trunk = 0  # this step's trunk length (tree mode): the inner tree's root is its last token
        self.target_top_k = int(getattr(inner, "target_top_k", 0) or 0)  # passed on (ProposerSession)
        self._prefix_ids: frozenset[int] | None = None  # tokens a longer token starts with (lazy)

    def forced_tokens(self, view: StepView, *, open_end: bool = False) -> list[list[int]]:
        """Per row, the tokens of the grammar's forced continuation (empty when nothing is forced).

        ``open_end`` drops a last token that prefixes a longer one (``{`` of ``{"``, `` `` of
        `` true``): the model may spell the forced text's end together with what follows, and a
        mismatch there throws away every draft after it in the step. The inner strategy drafts it."""
        grammar, out = self.ctx.grammar, []
        for row in range(view.pending.shape[0]):
            budget = min(self.max_tokens, int(view.max_drafts[row]))
            text = grammar.jump_forward_string(row) if budget else ""
            with grammar.clock():  # tokenizing forced text is grammar work too
                tokens = self.ctx.tokenizer.encode(text, add_special_tokens=False) if text else []
                if open_end and tokens and tokens[-1] in self.prefix_ids:
                    tokens = tokens[:-1]
            out.append(tokens[:budget])
        width = max((len(f) for f in out), default=0)
        if width:  # keep only what the grammar accepts token by token (tokenizers may add odd pieces)
            ids = torch.tensor([f + [0] * (width - len(f)) for f in out])
            keep = grammar.grammatical_prefix(ids, torch.tensor([len(f) for f in out]))
            out = [f[: int(k)] for f, k in zip(out, keep, strict=True)]
        return out

    @property
    def prefix_ids(self) -> frozenset[int]:
        if self._prefix_ids is None:
            self._prefix_ids = prefix_tokens(self.ctx.tokenizer, self.ctx.vocab_size)
        return self._prefix_ids

    def propose(self, view: StepView) -> Proposal:
        if self.inner is None:
            return _pack(self.forced_tokens(view), view.pending)
        if self.tree_inner:
            return self._trunk_then_tree(view)
        return self._interleave(view)

    def _trunk_then_tree(self, view: StepView) -> Proposal:
        """For an inner strategy that proposes token trees: the forced run every drafting row shares,
        as a chain (the trunk), with the inner strategy's tree hung from the trunk's last token.

        The inner strategy proposes from the view (and grammar state) with the trunk assumed, so its
        tree is masked and cached as if the trunk were committed; ``on_commit`` shows it the step in
        its own node space. Forced text inside the tree's branches is not looked for."""
        rows: list[list[int]] = [[] for _ in range(view.pending.shape[0])]
        drafting = (view.max_drafts > 0).tolist()
        with contextlib.ExitStack() as walked_so_far:
            view, shared = self._take_forced(view, rows, drafting, walked_so_far, self.max_tokens)
            one = torch.tensor(drafting, dtype=view.max_drafts.dtype).to(view.max_drafts.device)
            tree = self.inner.propose(replace(view, max_drafts=view.max_drafts * one))
        self.trunk = shared
        return graft(rows, shared, tree)

    def _interleave(self, view: StepView) -> Proposal:
        """Alternate forced runs (free) with one inner draft at a time, walking the grammar along.

        Each inner call sees the view the engine would show if everything proposed so far were
        committed, so a draft model's cache holds exactly the tokens that get verified, in the
        same slots, and its grammar masks are taken at the right state."""
        rows: list[list[int]] = [[] for _ in range(view.pending.shape[0])]
        q_columns: list[torch.Tensor | None] = []  # the inner's q per column; None = forced (one-hot)
        drafting = (view.max_drafts > 0).tolist()  # rows still extending their drafts
        forced_left, inner_left = self.max_tokens, self.inner_budget
        with contextlib.ExitStack() as walked_so_far:
            while True:
                drafting = [d and room > 0 for d, room in zip(drafting, view.max_drafts.tolist(), strict=True)]
                view, shared = self._take_forced(view, rows, drafting, walked_so_far, forced_left)
                q_columns.extend([None] * shared)
                forced_left -= shared
                if inner_left == 0 or not any(drafting):
                    break
                one = torch.tensor(drafting, dtype=view.max_drafts.dtype).to(view.max_drafts.device)
                base = self.inner.propose(replace(view, max_drafts=view.max_drafts.clamp(max=1) * one))
                if base.ids.shape[1] == 0 or int(base.lengths.max()) == 0:
                    break
                drafting = [d and n > 0 for d, n in zip(drafting, base.lengths.tolist(), strict=True)]
                if not any(drafting):
                    break
                chunk = [[int(t)] if d else [0] for t, d in zip(base.ids[:, 0].tolist(), drafting, strict=True)]
                view = self._extend(view, chunk, rows, drafting, walked_so_far)
                q_columns.append(base.probs[:, 0] if base.probs is not None else None)
                inner_left -= 1
        return _pack(rows, view.pending, q_columns)

    def _take_forced(self, view, rows, drafting, walked_so_far, limit: int) -> tuple[StepView, int]:
        """Append the forced tokens every drafting row shares (at most ``limit``) via ``_extend``;
        returns the extended view and how many were taken."""
        forced = self.forced_tokens(view, open_end=True)
        shared = min(min((len(f) for f, d in zip(forced, drafting, strict=True) if d), default=0), limit)
        if shared:
            chunk = [f[:shared] if d else [0] * shared for f, d in zip(forced, drafting, strict=True)]
            view = self._extend(view, chunk, rows, drafting, walked_so_far)
        return view, shared

    def _extend(self, view, chunk, rows, drafting, walked_so_far) -> StepView:
        """Append ``chunk`` (B, m) to every drafting row and to the grammar state; rows whose
        grammar refuses a token or ends (a drafted EOS) stop drafting."""
        for row, tokens in enumerate(chunk):
            if drafting[row]:
                rows[row].extend(tokens)
        walked = walked_so_far.enter_context(
            self.ctx.grammar.assuming([c if d else [] for c, d in zip(chunk, drafting, strict=True)], strict=False)
        )
        for row, tokens in enumerate(chunk):
            if drafting[row] and (walked[row] < len(tokens) or self.ctx.grammar.terminated(row)):
                drafting[row] = False
        return _view_after(view, torch.tensor(chunk, dtype=view.pending.dtype, device=view.pending.device))

    def on_commit(self, result: StepResult) -> None:
        if self.inner is None:
            return
        if self.trunk:  # tree mode: the inner strategy's root was the trunk's last node
            result = past_trunk(result, self.trunk)
            self.trunk = 0
        self.inner.on_commit(result)


def _view_after(view: StepView, forced: torch.Tensor) -> StepView:
    """The view the engine would show after committing ``forced`` (B, m) on every row."""
    batch, m = forced.shape
    ids = view.ids.clone()
    for row in range(batch):
        start = int(view.lengths[row])
        room = max(0, min(m, ids.shape[1] - start))  # rows that stopped drafting may have no room
        ids[row, start : start + room] = forced[row, :room]
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


def graft(trunk_rows: list[list[int]], trunk: int, tree: Proposal) -> Proposal:
    """The trunk (each row's ``trunk_rows[i]``: ``trunk`` tokens, or none for rows that do not draft)
    as a chain of one-hot nodes, then ``tree`` hung from its last node (pure)."""
    if trunk == 0:
        return tree
    batch, n = tree.ids.shape
    device = tree.ids.device
    head = torch.tensor([r if r else [0] * trunk for r in trunk_rows], dtype=tree.ids.dtype, device=device)
    ids = torch.cat([head, tree.ids], dim=1)
    tree_parents = tree.parents if tree.parents is not None else chain_parents(batch, n, device)
    parents = torch.cat([chain_parents(batch, trunk, device), tree_parents.to(device) + trunk], dim=1)
    lengths = torch.tensor([len(r) for r in trunk_rows], dtype=torch.long) + tree.lengths.cpu()
    probs = None
    if tree.probs is not None:
        one_hot = torch.nn.functional.one_hot(head, tree.probs.shape[-1]).to(tree.probs)
        probs = torch.cat([one_hot, tree.probs], dim=1)
    return Proposal(ids=ids, lengths=lengths, probs=probs, parents=parents)


def past_trunk(result: StepResult, trunk: int) -> StepResult:
    """``result`` in the node space of a tree hung from node ``trunk - 1`` (its root): columns shift
    by ``trunk``; rows that did not reach the tree get a negative ``num_accepted`` (pure)."""
    path = (result.path[:, trunk:] - trunk).clamp_min(0)
    top = result.target_top[:, trunk:] if result.target_top is not None else None
    return replace(
        result,
        path=path,
        target_top=top,
        num_accepted=result.num_accepted - trunk,
        emitted=result.emitted[:, trunk:],
        kept=(result.kept - trunk).clamp_min(0),
    )


def _pack(rows: list[list[int]], like: torch.Tensor, q_columns: list[torch.Tensor | None] | None = None) -> Proposal:
    """Stack per-row drafts. With a sampled inner q, forced columns get a one-hot q (the exact
    rule for a deterministic proposal; ``None`` in ``q_columns``) and drafted columns the inner's q."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    ids = like.new_zeros((len(rows), width))
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
    sampled = [q for q in (q_columns or []) if q is not None]
    if not sampled:
        return Proposal(ids=ids, lengths=lengths)
    vocab, device, dtype = sampled[0].shape[-1], sampled[0].device, sampled[0].dtype
    probs = torch.nn.functional.one_hot(ids.cpu(), vocab).to(dtype).to(device)
    for column, q in enumerate(q_columns[:width]):
        if q is not None:
            probs[:, column] = q
    return Proposal(ids=ids, lengths=lengths, probs=probs)


def with_jump_forward(strategy: Strategy | None, enabled: Any) -> Strategy | None:
    """The strategy a ``grammar=`` call runs: ``strategy`` wrapped in ``JumpForward`` when ``enabled``.

    Never wraps twice (a ``JumpForward``, or a compiled plan of one, is returned as is); a compiled
    plan is re-planned over the same graphs with its strategy wrapped (``CompiledPlan.sharing``),
    so its node budget and caches still hold. ``enabled=False`` with an explicit ``JumpForward``
    contradicts itself and raises, as does a non-bool ``enabled``. Pure: builds, never runs."""
    from hfspec.lowering.plan import CompiledPlan

    check_jump_forward(enabled)
    inner = strategy.strategy if isinstance(strategy, CompiledPlan) else strategy
    if isinstance(inner, JumpForward):
        if not enabled:
            raise ConfigurationError(
                f"jump_forward=False contradicts assistant_strategy={strategy!r}, which is jump-forward; "
                "drop one of them (pass the inner strategy alone to decode without jump-forward)."
            )
        return strategy
    if not enabled:
        return strategy
    if isinstance(strategy, CompiledPlan):
        return strategy.sharing(JumpForward(inner if not isinstance(inner, NoDrafts) else None))
    return JumpForward(strategy if not isinstance(strategy, NoDrafts) else None)


def check_jump_forward(enabled: Any) -> None:
    """``jump_forward=`` must be a bool (checked before any model work, with or without grammar=)."""
    if not isinstance(enabled, bool):
        raise ConfigurationError(f"jump_forward= must be True or False, got {enabled!r} of type {type(enabled).__name__}.")
