"""Tree-shaped acceptance rules (SpecInfer / Sequoia) as pure tensor functions (docs/design.md, "Acceptance").

Tree convention (shared with the engine, see also ``hfspec.tree``): B rows, N draft nodes per
row (padded), V vocabulary.

* ``tokens`` (B, N) long: the draft token of each node.
* ``parents`` (B, N) long: parent node of each node, ``-1`` = the root (the last committed
  token). Topological order: ``parents[b, j] < j``. A chain is ``parents[b, j] = j - 1``.
* ``num_nodes`` (B,) long: row b uses nodes ``[0, num_nodes[b])``; the rest is padding whose
  tokens, parents and distributions are ignored (they may be garbage).
* ``target`` (B, N + 1, V): column 0 is the target distribution (or processed scores) after the
  root, column j + 1 the one after node j, i.e. the distribution node j's children are judged by.

Both walks process the nodes once, in index order: since a child always has a larger index than
its parent, "the children of the current node, in index order" are exactly the later nodes whose
parent is the current node, so one pass over j = 0..N-1 (vectorised over rows) is the
sequential root-to-leaf walk. Nothing here touches models or caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfspec.acceptance import residual_distribution
from hfspec.tree import chain_parents  # noqa: F401  (re-exported: the chain layout)


@dataclass
class TreeAcceptance:
    """What a tree walk decided, per row."""

    path: torch.Tensor  # (B, N) long: accepted node indices from the root down, -1 padded
    num_accepted: torch.Tensor  # (B,) long: accepted nodes per row (= the path's length)
    next_token: torch.Tensor  # (B,) long: correction (on rejection) or bonus token at the last accepted node
    log_weight: torch.Tensor  # (B,) float: 0 for these exact rules (a slot for grammar-aligned/SMC work)

    def emitted(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N + 1) long: the accepted draft tokens, then ``next_token``, then -1 padding."""
        b, n = tokens.shape
        drafted = tokens.gather(1, self.path.clamp_min(0))
        cols = torch.arange(n + 1, device=tokens.device)[None, :]
        out = torch.cat([drafted, self.next_token[:, None]], dim=1)
        out = torch.where(cols < self.num_accepted[:, None], out, torch.full_like(out, -1))
        return out.scatter(1, self.num_accepted[:, None], self.next_token[:, None])


def tree_depths(parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """(B, N) long depth of each node: 1 for the root's children, 0 for padding nodes."""
    b, n = parents.shape
    valid = _valid(num_nodes, n)
    depth = torch.zeros(b, n, dtype=torch.long, device=parents.device)
    for j in range(n):  # a parent's depth is known before its children's
        par = parents[:, j]
        d_par = depth.gather(1, par.clamp(0, max(j - 1, 0))[:, None]).squeeze(1)
        d = torch.where(par >= 0, d_par, torch.zeros_like(d_par)) + 1
        depth[:, j] = torch.where(valid[:, j], d, torch.zeros_like(d))
    return depth


def _valid(num_nodes: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N) bool: node j is a real node of row b."""
    return torch.arange(n, device=num_nodes.device)[None, :] < num_nodes[:, None]


def _check_tree(
    tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor, target: torch.Tensor
) -> None:
    assert tokens.dim() == 2, f"tokens must be (B, N), got {tuple(tokens.shape)}"
    b, n = tokens.shape
    assert parents.shape == (b, n), f"parents must be ({b}, {n}), got {tuple(parents.shape)}"
    assert num_nodes.shape == (b,), f"num_nodes must be ({b},), got {tuple(num_nodes.shape)}"
    assert target.dim() == 3 and target.shape[:2] == (b, n + 1), (
        f"target must be (B={b}, N+1={n + 1}, V), got {tuple(target.shape)}"
    )
    if b == 0:
        return
    assert int(num_nodes.min()) >= 0 and int(num_nodes.max()) <= n, (
        f"num_nodes must lie in [0, N={n}], got {num_nodes.tolist()}"
    )
    v = target.shape[-1]
    cols = torch.arange(n, device=tokens.device)[None, :]
    bad = _valid(num_nodes, n) & ((parents < -1) | (parents >= cols) | (tokens < 0) | (tokens >= v))
    assert not bool(bad.any()), (
        "real nodes need -1 <= parents[b, j] < j (topological order) and 0 <= tokens < V; "
        f"offending (row, node): {torch.nonzero(bad)[:8].tolist()}"
    )


def greedy_tree_accept(
    tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor, target_scores: torch.Tensor
) -> TreeAcceptance:
    """Greedy walk: from the root, descend into the first child (in index order) whose token is
    the argmax of the target at the current node; stop when no child matches. ``next_token`` is
    the argmax at the last accepted node (column 0 when none was accepted). For a chain this is
    exactly ``acceptance.greedy_accept``.

    tokens, parents (B, N) long, num_nodes (B,) long, target_scores (B, N + 1, V) processed scores.
    """
    _check_tree(tokens, parents, num_nodes, target_scores)
    b, n = tokens.shape
    dev = tokens.device
    valid = _valid(num_nodes, n)
    best = target_scores.argmax(dim=-1)  # (B, N+1)
    cols = torch.arange(n, device=dev)[None, :]
    cur = torch.full((b,), -1, dtype=torch.long, device=dev)  # current node (-1: root)
    num = torch.zeros(b, dtype=torch.long, device=dev)
    path = torch.full((b, n), -1, dtype=torch.long, device=dev)
    for j in range(n):
        want = best.gather(1, (cur + 1)[:, None]).squeeze(1)
        take = valid[:, j] & (parents[:, j] == cur) & (tokens[:, j] == want)
        path = torch.where(take[:, None] & (cols == num[:, None]), j, path)
        num = num + take.long()
        cur = torch.where(take, j, cur)
    next_token = best.gather(1, (cur + 1)[:, None]).squeeze(1)
    log_weight = torch.zeros(b, dtype=_float_dtype(target_scores), device=dev)
    return TreeAcceptance(path=path, num_accepted=num, next_token=next_token, log_weight=log_weight)


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _check_distinct_siblings(
    tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor, stochastic
) -> None:
    """replacement=False promises that a stochastic node's token differs from every earlier
    sibling's; a repeat means the draws were made with replacement (or the flag is wrong)."""
    b, n = tokens.shape
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)  # [i, j]: i < j
    pair = (
        earlier[None]
        & (parents[:, :, None] == parents[:, None, :])
        & (tokens[:, :, None] == tokens[:, None, :])
        & valid[:, :, None]
        & (valid & stochastic)[:, None, :]
    )
    if bool(pair.any()):
        row, i, j = torch.nonzero(pair)[0].tolist()
        raise ValueError(
            f"replacement=False, but in row {row} stochastic node {j} repeats the token of its earlier "
            f"sibling {i} ({int(tokens[row, j])}): draws without replacement never repeat a sibling. "
            "Pass replacement=True if the siblings were drawn i.i.d."
        )


def stochastic_tree_accept(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    replacement: bool = True,
    generator: torch.Generator | None = None,
) -> TreeAcceptance:
    """Recursive rejection sampling over a token tree (SpecInfer / Sequoia); lossless.

    tokens, parents (B, N) long, num_nodes (B,) long, target_probs (B, N + 1, V),
    draft_probs (B, N, V) or None: ``draft_probs[b, j]`` is the distribution q that node j's token
    was drawn from (siblings drawn from one q share it); None means every node is deterministic.

    **Rule.** At the current node (residual R := target there) the children s_1..s_m (index
    order, tokens x_i) are tried in turn: accept s_i iff u_i * D_i(x_i) < R(x_i) (probability
    min(1, R/D_i)); if accepted, descend into it (R := target at s_i); else R := norm(max(R - D_i, 0))
    (``residual_distribution``). When every child is rejected (or there are none), ``next_token`` ~ R.
    D_i must be the law of x_i given the earlier siblings' tokens:

    * deterministic child (draft_probs None, or its row is exactly one-hot at x_i): D_i = one-hot(x_i),
      i.e. accept with prob R(x_i), else R := R with x_i zeroed and renormalised. Exact for any
      fixed token set, duplicates and p(x) = 0 included;
    * ``replacement=True`` (siblings drawn independently, x_i ~ q_i): D_i = q_i, the node's own row;
    * ``replacement=False`` (sequential draws without replacement): D_i = q_i with the tokens of every
      earlier sibling (deterministic ones included) zeroed and renormalised -- the sampler's
      conditional law. Checked cheaply: a stochastic node repeating an earlier sibling's token
      raises ValueError.

    **Why it is exact.** Lemma: if x ~ D, x is accepted with prob min(1, R(x)/D(x)) and on rejection
    the output is drawn from norm(max(R - D, 0)), the output is ~R, since
    P(y) = min(R(y), D(y)) + (1 - sum min(R, D)) max(R(y) - D(y), 0) / sum max(R - D, 0) = R(y)
    (both sums are 1 - sum min). Backward induction over siblings: given the earlier siblings'
    tokens and their (rejected) uniforms, x_i ~ D_i -- exactly when D_i is the conditional
    law above -- and everything after a rejection emits ~ norm(max(R - D_i, 0)) whatever x_i was,
    so the token emitted at this node is ~ target(. | path). With the wrong D_i (q_i for draws made
    without replacement, or vice versa, or a soft q for a deterministic child) the premise x_i ~ D_i
    fails and so does the output law. A rejected x_i has R(x_i) <= D_i(x_i), so the residual gives it
    mass 0: later duplicates are never accepted. An accepted child's subtree was drafted given its
    token only, so the same argument applies one level down: every emitted token is distributed as
    the target given the tokens before it. For a chain with ``replacement=True`` this is
    ``acceptance.speculative_accept``, draw for draw with the same generator.

    Randomness: one ``torch.rand((B, N))`` (``u[b, j]`` decides node j) then one
    ``torch.multinomial(R, 1)``, both with ``generator``.
    """
    _check_tree(tokens, parents, num_nodes, target_probs)
    b, n = tokens.shape
    v = target_probs.shape[-1]
    dev, dtype = target_probs.device, target_probs.dtype
    if draft_probs is not None:
        assert draft_probs.shape == (b, n, v), (
            f"draft_probs must be {(b, n, v)}, got {tuple(draft_probs.shape)}"
        )
        draft_probs = draft_probs.to(dtype)
    valid = _valid(num_nodes, n)
    x_all = torch.where(valid, tokens, torch.zeros_like(tokens))  # padding tokens may be garbage
    if draft_probs is None:
        det = torch.ones(b, n, dtype=torch.bool, device=dev)
    else:
        q_x = draft_probs.gather(-1, x_all[..., None]).squeeze(-1)
        det = (q_x == 1) & ((draft_probs > 0).sum(dim=-1) == 1)  # exactly one-hot at the token
        if not replacement:
            _check_distinct_siblings(x_all, parents, valid, ~det)
    u = torch.rand((b, n), generator=generator, device=dev, dtype=dtype)

    cols = torch.arange(n, device=dev)[None, :]
    cur = torch.full((b,), -1, dtype=torch.long, device=dev)
    num = torch.zeros(b, dtype=torch.long, device=dev)
    path = torch.full((b, n), -1, dtype=torch.long, device=dev)
    resid = target_probs[:, 0]
    drawn = (
        None if replacement else torch.zeros(b, v, dtype=torch.bool, device=dev)
    )  # rejected siblings' tokens
    for j in range(n):
        x = x_all[:, j]
        live = valid[:, j] & (parents[:, j] == cur)  # node j is the next child of the current node
        one_hot = torch.zeros(b, v, dtype=dtype, device=dev).scatter_(1, x[:, None], 1.0)
        if draft_probs is None:
            d = one_hot
        else:
            q = draft_probs[:, j]
            if drawn is not None:
                q = q.masked_fill(drawn, 0.0)
                total = q.sum(dim=-1, keepdim=True)
                q = torch.where(total > 0, q / torch.where(total > 0, total, torch.ones_like(total)), q)
            d = torch.where(det[:, j, None], one_hot, q)
        r_x = resid.gather(1, x[:, None]).squeeze(1)
        d_x = d.gather(1, x[:, None]).squeeze(1)
        acc = live & (u[:, j] * d_x < r_x)  # prob min(1, R/D); never divides by zero
        rej = live & ~acc
        resid = torch.where(
            acc[:, None],
            target_probs[:, j + 1],
            torch.where(rej[:, None], residual_distribution(resid, d), resid),
        )
        path = torch.where(acc[:, None] & (cols == num[:, None]), j, path)
        num = num + acc.long()
        cur = torch.where(acc, j, cur)
        if drawn is not None:
            drawn = torch.where(acc[:, None], torch.zeros_like(drawn), drawn | (rej[:, None] & (one_hot > 0)))
    if b == 0:
        next_token = torch.zeros(0, dtype=torch.long, device=dev)
    else:
        next_token = torch.multinomial(resid, 1, generator=generator).squeeze(1)
    log_weight = torch.zeros(b, dtype=_float_dtype(target_probs), device=dev)
    return TreeAcceptance(path=path, num_accepted=num, next_token=next_token, log_weight=log_weight)
