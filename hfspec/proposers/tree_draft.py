"""Token trees from a draft model (EAGLE-2 style dynamic trees), for ``DraftModel(..., tree=TreeSpec(...))``.

One step, per row, under a node budget N (``num_tokens``, capped by ``view.max_drafts``):

1. One draft forward over the catch-up slots and the root (the pending token): the root's
   processed draft distribution q gives ``top_k`` candidate children, scored by log q.
2. For each depth d = 1 .. depth - 1, one draft forward over the *frontier*: up to ``top_k``
   depth-d candidates, chosen best-first by path probability (the product of q along the path)
   among those that can still make the final tree. Frontier nodes sit at position root + d and
   attend to the committed slots, the root and their own ancestors only (a per-query mask over
   the tree slots written so far, ``tree_run``). Each yields ``top_k`` children.
3. The tree is the *spine* plus the best N - len(spine) other candidates by path probability
   (ties: earlier candidate first). A child never scores above its parent, so the set is closed
   under ancestors, and candidate order is topological (``hfspec.tree`` convention).

The spine is the chain a chain draft of length min(depth, N) would propose: always kept, always
the first child of its parent. Greedy (no sampling): the spine is the top-1 chain and every
node is a top-k token, a deterministic proposal (one-hot rule), and the tree contains the chain,
so it accepts at least as far as a chain of the same depth. Sampling (``do_sample``): each spine
node is drawn from q and reported with that q; its siblings are the top tokens other than the
draw, reported one-hot. The engine's SpecInfer walk (``stochastic_tree_accept``, replacement=True)
then judges the spine node first with min(1, R/q) and the later siblings with the one-hot rule,
which is exact: the spine node is the first child, present whatever it draws (its presence
depends on the budget only), so it is distributed as q given the history; every later node is a
function of what came before, and for such nodes the one-hot rule is exact for any token
(docs/design.md "Acceptance", tree_acceptance docstring). Pruning siblings by their own sampled values (EAGLE-2's
reranking of sampled children) would not be.

KV consistency: the draft store holds the engine's slot layout, then the root, then every
frontier node in the order it was forwarded (at most N tree slots per step, so the compiled
plan's draft capacity holds). ``on_commit`` maps the accepted path (node space) to where each of
its nodes was written and gathers those slots with ``store.keep``; the path's last node is
usually a leaf that was never forwarded, so the store keeps the longest prefix of the path that
it holds (the same for all rows: slots are shared) and re-feeds the rest from
``view.slot_tokens`` next step, as chains do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hfspec.engine_utils import fit_width, position_ids
from hfspec.exceptions import ConfigurationError
from hfspec.masks import as_attention_mask, visibility
from hfspec.proposers.base import Proposal, SessionContext, StepView
from hfspec.runner import ModelRunner
from hfspec.step import StepResult


@dataclass(frozen=True)
class TreeSpec:
    """Shape of the draft trees ``DraftModel(..., tree=TreeSpec(...))`` builds (the node budget is ``num_tokens``).

    Args:
        top_k: children proposed under every expanded node, and nodes expanded per depth (>= 1).
        depth: deepest node level (>= 1); a step costs ``depth`` draft forwards.
    """

    top_k: int = 2
    depth: int = 4

    def __post_init__(self) -> None:
        for name in ("top_k", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"TreeSpec({name}=...) must be an int >= 1, got {value!r}.")


def tree_run(
    runner: ModelRunner,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    tree_start: int,
    tree_visible: torch.Tensor,
    keep: int,
) -> torch.Tensor:
    """``runner.run`` for new tree nodes whose ancestors are already in the store.

    ``ModelRunner.run`` lets new tokens see every earlier valid slot with a smaller position; a
    node must not see the earlier-written nodes of other branches (same positions). Here
    ``tree_visible`` (B, Q, L - tree_start) bool says, per new token, which of the store's slots
    [tree_start, L) it may see (L = slots written before this call); slots before ``tree_start``
    follow the usual rule, and the new tokens see only themselves among each other.
    Returns the last ``keep`` columns' logits (B, keep, V).
    """
    model, store = runner.model, runner.store
    device = model.device
    tokens, positions, valid = tokens.to(device), positions.to(device), valid.to(device)
    b, q = tokens.shape
    new_visible = torch.eye(q, dtype=torch.bool, device=device).expand(b, q, q)
    start, key_valid, key_pos = store.write(valid, positions)
    assert tree_visible.shape == (b, q, start - tree_start), (tuple(tree_visible.shape), (b, q, start - tree_start))
    masks = {}
    for kind, window in runner.windows.items():
        vis = visibility(key_valid, key_pos, start, new_visible, positions, window)
        vis[:, :, tree_start:start] &= tree_visible.to(device)
        masks[kind] = as_attention_mask(vis, model, model.dtype)
    mask = next(iter(masks.values())) if len(masks) == 1 else masks
    runner.forwards += 1
    return runner._call(tokens, positions, mask, keep)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """(B, C) rank of each candidate by score, descending; ties: lower index first."""
    c = scores.shape[1]
    idx = torch.arange(c, device=scores.device)
    better = (scores[:, None, :] > scores[:, :, None]) | (
        (scores[:, None, :] == scores[:, :, None]) & (idx[None, None, :] < idx[None, :, None])
    )
    return better.sum(dim=-1)


class TreeDraftSession:
    """Per call: the draft's KV store (engine slot layout + this step's tree slots) and the last tree's slot map."""

    def __init__(
        self, model, num_tokens: int, tree: TreeSpec, threshold: float, sample: bool, ctx: SessionContext, runner
    ) -> None:
        self.model = model
        self.sample = sample
        self.num_tokens = num_tokens
        self.top_k, self.depth = tree.top_k, tree.depth
        self.log_threshold = math.log(threshold) if threshold > 0 else -math.inf
        self.ctx = ctx
        self.runner = runner
        self.base: int | None = None  # engine slot of this step's root (= slots before the step)
        self.node_columns: torch.Tensor | None = None  # (B, n) draft-store slot of node j minus base; -1 = not written

    # ------------------------------------------------------------------ helpers
    def _scores(self, view: StepView, paths: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed log q (B, F, V) float64 after each of F nodes; paths (B, F, L): tokens from the root down
        (with grammar= each node is masked at its own state: ``PrefixProcessor.at_paths``)."""
        logits = fit_width(logits.to(view.ids.device), self.ctx.vocab_size)
        columns = paths.permute(1, 0, 2).tolist()  # (F, B, L): column f's path per row
        scores = self.ctx.processor.at_paths(view.ids, view.lengths, columns, logits)
        return torch.log_softmax(scores.double(), dim=-1)

    def _children(self, logq: torch.Tensor, q: torch.Tensor | None, sampled: torch.Tensor):
        """Children of F nodes: (tokens, log q, is_spine), each (B, F, k).

        logq (B, F, V) processed log q after each node; q (B, F, V) the same as probabilities when
        sampling, else None; sampled (B, F) bool: the node is on the spine, so its first child is the
        next spine node: drawn from q when sampling (the other children are then the top tokens
        other than that draw), the top-1 token otherwise. Other nodes: the top-k tokens.
        """
        k = min(self.top_k, logq.shape[-1])
        top = logq.topk(k, dim=-1)
        tokens, spine = top.indices, torch.zeros(top.indices.shape, dtype=torch.bool, device=logq.device)
        spine[..., 0] = sampled
        if q is None or not bool(sampled.any()):
            return tokens, top.values, spine
        b, f, v = q.shape
        draw = torch.multinomial(q.reshape(b * f, v), 1).reshape(b, f, 1)
        rest = logq.scatter(-1, draw, -math.inf).topk(k - 1, dim=-1).indices
        mixed = torch.cat([draw, rest], dim=-1)
        tokens = torch.where(sampled[..., None], mixed, tokens)
        return tokens, logq.gather(-1, tokens), spine

    # ------------------------------------------------------------------ protocol
    def propose(self, view: StepView) -> Proposal:
        batch = view.pending.shape[0]
        budget = view.max_drafts.clamp_max(self.num_tokens)  # (B,) nodes each row may get
        n_max = int(budget.max()) if batch else 0
        self.base, self.node_columns = None, None
        if n_max == 0:
            return Proposal(ids=view.pending.new_zeros((batch, 0)), lengths=torch.zeros_like(view.max_drafts))
        device = view.ids.device
        store = self.runner.store
        num_slots = view.slot_tokens.shape[1]
        seen = min(store.length, num_slots)
        store.truncate(seen)
        store.valid[:, :seen] = view.slot_mask[:, :seen].bool().to(store.valid.device)  # holes the target rejected
        tokens = torch.cat([view.slot_tokens[:, seen:], view.pending[:, None]], dim=1)
        mask = torch.cat([view.slot_mask, torch.ones_like(view.pending)[:, None]], dim=1)
        positions = position_ids(mask)[:, seen:]
        root_pos = positions[:, -1].to(device)
        logits = self.runner.chain(tokens, positions, mask[:, seen:].bool(), keep=1)
        tree_start = store.length  # = num_slots + 1: the first tree slot
        k, depth = self.top_k, self.depth
        budget = budget.to(device)
        # the spine: min(depth, budget) nodes, the chain a chain draft would propose (sampled from q
        # when sampling, top-1 otherwise), always kept; the rest of the budget goes best-first
        spine_len = budget.clamp_max(depth)
        rest = budget - spine_len

        # candidates, grown level by level: token, log path probability, parent candidate, depth,
        # on the spine, tokens from the root down, written tree column (-1: not forwarded),
        # ancestors among the written columns
        cap = k + (depth - 1) * k * k
        c_tok = torch.zeros((batch, cap), dtype=torch.long, device=device)
        c_score = torch.full((batch, cap), -math.inf, dtype=torch.float64, device=device)
        c_parent = torch.full((batch, cap), -1, dtype=torch.long, device=device)
        c_depth = torch.zeros((batch, cap), dtype=torch.long, device=device)
        c_spine = torch.zeros((batch, cap), dtype=torch.bool, device=device)
        c_path = torch.zeros((batch, cap, depth), dtype=torch.long, device=device)
        c_col = torch.full((batch, cap), -1, dtype=torch.long, device=device)
        c_anc = torch.zeros((batch, cap, n_max), dtype=torch.bool, device=device)
        spine_q = [] if self.sample else None  # per depth: (B, V) q the spine node was drawn from
        rows = torch.arange(batch, device=device)

        def grow(start, parent, parent_score, parent_path, parent_anc, logq, q, sampled, level):
            """Append the children of F nodes (parent (B, F) candidate ids, -1 = root) at ``start``."""
            tok, logq_tok, spine = self._children(logq, q, sampled)
            f, kk = tok.shape[1], tok.shape[2]
            new = slice(start, start + f * kk)
            c_tok[:, new] = tok.reshape(batch, -1)
            c_score[:, new] = (parent_score[..., None] + logq_tok).reshape(batch, -1)
            c_parent[:, new] = parent.repeat_interleave(kk, dim=1)
            c_depth[:, new] = level
            c_spine[:, new] = spine.reshape(batch, -1)
            path = parent_path.repeat_interleave(kk, dim=1)
            path[:, :, level - 1] = tok.reshape(batch, -1)
            c_path[:, new] = path
            c_anc[:, new] = parent_anc.repeat_interleave(kk, dim=1)
            if spine_q is not None and bool(sampled.any()):  # sampling: keep the q each spine node was drawn from
                spine_q.append(q[rows, sampled.long().argmax(dim=1)])  # one spine node per row and level
            return start + f * kk

        scores = self._scores(view, c_path[:, :1, :0], logits)  # (B, 1, V)
        q = torch.softmax(scores.float(), dim=-1) if self.sample else None
        root = torch.full((batch, 1), -1, dtype=torch.long, device=device)
        count = grow(
            0, root, c_score.new_zeros((batch, 1)), c_path[:, :1], c_anc[:, :1], scores, q,
            (spine_len > 0)[:, None], level=1,
        )
        written = 0
        spine_forwards = int(spine_len.max()) - 1  # the spine node of depths 1 .. spine_len - 1 is expanded
        for level in range(1, depth):
            # slots written per step stay <= n_max, and the spine's later forwards keep a slot each
            width = min(k, count, n_max - written - max(spine_forwards - level, 0))
            if width <= 0:
                break
            score = c_score[:, :count]
            at_level = c_depth[:, :count] == level
            ranks = _ranks(torch.where(c_spine[:, :count], -math.inf, score))  # among off-spine nodes
            spine = at_level & c_spine[:, :count] & (level < spine_len)[:, None]
            eligible = (
                at_level
                & ~c_spine[:, :count]
                & (score > -math.inf)
                & (score >= self.log_threshold)
                & (ranks < rest[:, None])
            )
            key = torch.where(eligible, score, -math.inf)
            key = torch.where(spine, math.inf, key)  # the spine node is always expanded, first
            f_key, f_idx = key.topk(width, dim=-1)  # (B, F): the frontier
            f_valid = f_key > -math.inf
            if not bool(f_valid.any()):
                break
            f_anc = c_anc[rows[:, None], f_idx]  # (B, F, n_max)
            logits = tree_run(
                self.runner,
                c_tok.gather(1, f_idx),
                (root_pos + level)[:, None].expand(batch, width),
                f_valid,
                tree_start,
                f_anc[:, :, :written],
                keep=width,
            )
            cols = written + torch.arange(width, device=device)
            c_col[rows[:, None], f_idx] = torch.where(f_valid, cols.expand(batch, width), c_col.gather(1, f_idx))
            f_anc[:, torch.arange(width), cols] = f_valid
            c_anc[rows[:, None], f_idx] = f_anc
            written += width
            f_path = c_path[rows[:, None], f_idx]  # (B, F, depth)
            scores = self._scores(view, f_path[:, :, :level], logits)  # (B, F, V)
            q = torch.softmax(scores.float(), dim=-1) if self.sample else None
            f_score = torch.where(f_valid, c_score.gather(1, f_idx), -math.inf)
            f_spine = f_valid & c_spine.gather(1, f_idx)
            count = grow(count, f_idx, f_score, f_path, f_anc, scores, q, f_spine, level + 1)

        # the tree: the spine, then the best other candidates, in candidate (= topological) order
        score, spine = c_score[:, :count], c_spine[:, :count]
        chosen = (spine & (c_depth[:, :count] <= spine_len[:, None])) | (
            ~spine & (score > -math.inf) & (_ranks(torch.where(spine, -math.inf, score)) < rest[:, None])
        )
        idx = torch.arange(count, device=device).expand(batch, count)
        order = torch.where(chosen, idx, idx + count).sort(dim=1).values % count
        lengths = chosen.sum(dim=1)
        n = int(lengths.max())
        order = order[:, :n]
        real = torch.arange(n, device=device)[None, :] < lengths[:, None]
        node_of = torch.full((batch, count), -1, dtype=torch.long, device=device)
        node_of[rows[:, None], order] = torch.where(real, torch.arange(n, device=device).expand(batch, n), -1)
        parent_cand = c_parent.gather(1, order)
        parents = torch.where(parent_cand >= 0, node_of.gather(1, parent_cand.clamp_min(0)), -1)
        chain = (torch.arange(n, device=device) - 1).expand(batch, n)
        parents = torch.where(real, parents, chain)  # padding nodes: chain layout
        ids = torch.where(real, c_tok.gather(1, order), 0)
        node_cols = c_col.gather(1, order)
        self.base = num_slots
        self.node_columns = torch.where(real & (node_cols >= 0), node_cols + 1, -1)
        probs = None
        if self.sample:  # spine nodes: the q they were drawn from; the others: one-hot (deterministic)
            v = self.ctx.vocab_size
            probs = torch.zeros((batch, n, v), dtype=torch.float32, device=device)
            probs.scatter_(2, ids[..., None], real[..., None].float())
            node_spine = real & c_spine.gather(1, order)
            if spine_q and bool(node_spine.any()):
                by_depth = torch.stack(spine_q, dim=1)  # (B, depth', V)
                node_depth = (c_depth.gather(1, order) - 1).clamp(0, by_depth.shape[1] - 1)
                spine_rows = by_depth[rows[:, None], node_depth]  # (B, n, V)
                probs = torch.where(node_spine[..., None], spine_rows, probs)
        return Proposal(ids=ids, lengths=lengths.cpu().minimum(view.max_drafts), parents=parents, probs=probs)

    def on_commit(self, result: StepResult) -> None:
        """Keep the committed path's slots this store wrote (a prefix of the path, shared by all rows)."""
        store = self.runner.store
        if self.node_columns is None or result.kept_slots <= self.base:  # no tree, or no row reached it
            store.truncate(min(store.length, result.kept_slots))
            self.base, self.node_columns = None, None
            return
        base, m = self.base, result.kept_slots - self.base
        path = result.path[:, :m].to(self.node_columns.device)
        batch = path.shape[0]
        columns = torch.cat([self.node_columns.new_zeros((batch, 1)), self.node_columns], dim=1)  # node space
        columns = columns.gather(1, path.clamp(0, columns.shape[1] - 1))
        real = torch.arange(m, device=path.device)[None, :] <= result.num_accepted.to(path.device)[:, None]
        missing = (real & (columns < 0)).any(dim=0)
        keep = int(missing.nonzero()[0]) if bool(missing.any()) else m
        columns = torch.where(real, columns, 0)[:, :keep]
        store.keep(base, columns, real[:, :keep])
        self.base, self.node_columns = None, None
