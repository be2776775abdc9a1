"""The tree walks of ``hfspec.tree_acceptance`` are lossless, and these tests can tell when they are not.

Evidence, in the style of tests/test_acceptance.py (DESIGN.md §4, §7):

1. **Exact laws.** A toy "model" whose target/draft next-token distributions depend on the whole
   prefix (p[t][prefix], q[t][prefix]; so a rule that reads the wrong node or the wrong column
   fails). For a small tree (up to 6 nodes, depth <= 2, V in 2..6, plus garbage padding nodes)
   ``tree_law`` enumerates EVERY draft-token assignment with its sampling probability (siblings
   i.i.d. from q, or sequential draws without replacement, or fixed deterministic tokens), runs
   the REAL function on all of them with ``torch.rand`` replaced by chosen uniforms (the
   acceptance probability of node j is found by a search on u[:, j]: it is the real
   comparison's threshold, not a formula) and ``torch.multinomial`` replaced by a recorder (the
   correction/bonus law is the one the real code builds), and appends the target's own
   continuation (valid by induction over calls: a call is lossless iff "its emission, then the
   target" has the target's law). Hypothesis checks, in float64 to 1e-9, that the law of the
   first L = depth + 1 emitted tokens -- so of the first token, of the first two, ... -- is the
   target's p[0] x p[1](.|y1) x p[2](.|y1 y2), for stochastic siblings with and without
   replacement, for EVERY fixed deterministic token set (duplicates, p = 0 tokens, one-hot rows
   or draft_probs=None) and for mixed trees.
2. **Sampled frequencies.** The real function on B = 200,000 independent rows of a fixed
   2-level tree (root with 3 children, two of which have children), drafts sampled by
   ``torch.multinomial`` with a seeded generator, Pearson chi-square
   (``hfspec.testing_dist.chi_square_pvalue``) of the first token against p[0], of the first
   two and of the first three tokens against the target's law. **False-positive rate:** each
   chi-square p-value is compared with ``ALPHA = 1e-4``; for a correct sampler it is uniform, so
   a configuration (3 p-values) fails with probability <= 3e-4 over the choice of seed, <= 2e-3
   for the whole file. Seeds are fixed, so the suite is deterministic.
3. **Planted bugs** that the SAME checks must reject: (a) no residual update between siblings
   (every child judged against the node's original p), (b) the with-replacement rule used for
   children drawn without replacement, (c) deterministic children judged with min(1, p/q) against
   the draft's soft q instead of one-hot. Each is at exact total variation >= 0.02 from the target
   on the planted case, rejected by chi-square at ALPHA, and falsified by the hypothesis property.

Plus greedy walks on hand-built trees and against a per-row reference, chain equivalence with
``greedy_accept`` / ``speculative_accept`` (draw for draw), well-formed outputs on arbitrary
trees, the replacement=False check and the helpers.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from hfspec.acceptance import greedy_accept, residual_distribution, speculative_accept
from hfspec.testing_dist import chi_square_pvalue, counts, total_variation
from hfspec.tree_acceptance import (
    TreeAcceptance,
    chain_parents,
    greedy_tree_accept,
    stochastic_tree_accept,
    tree_depths,
)

WalkFn = Callable[..., TreeAcceptance]

ALPHA = 1e-4  # per chi-square p-value; see the module docstring
B = 200_000  # rows per chi-square run
EXACT_TOL = 1e-9
MIN_PLANTED_TV = 0.02
F64 = torch.float64
MAX_DEPTH = 2  # of the trees in the exact-law properties
MAX_ASSIGNMENTS = 729  # V ** num_nodes, per exact law


# --------------------------------------------------------------------------------------------
# Toy model: target/draft next-token laws that depend on the whole prefix.
# --------------------------------------------------------------------------------------------


@dataclass
class Toy:
    """p[t] (V,)*(t+1): target law of token t+1 given tokens 1..t (index = prefix, then token);
    q[t] likewise for the draft. len(p) = L (tokens followed), len(q) = L - 1."""

    v: int
    p: list[torch.Tensor]
    q: list[torch.Tensor]

    @property
    def length(self) -> int:
        return len(self.p)

    def target_law(self) -> torch.Tensor:
        """(V,)*L: the target's law of the first L tokens."""
        return self.continuation(0)

    def continuation(self, k: int) -> torch.Tensor:
        """(V,)*L: prod_{t >= k} p[t], i.e. [y1..yL] -> P(y_{k+1}..y_L | y_1..y_k)."""
        out = torch.ones((self.v,) * self.length, dtype=F64)
        for t in range(k, self.length):
            out = out * self.p[t].reshape(self.p[t].shape + (1,) * (self.length - t - 1))
        return out


_TINY = [0.0, 1e-12, 1e-15, 1e-300, 5e-324]
STYLES = ["random", "sparse", "onehot", "tiny"]
KINDS = ["random", "disjoint", "onehot_p", "onehot_q", "equal", "tiny", "sparse", "mixed"]


def _vec(rng: np.random.Generator, v: int, style: str, support: Sequence[int] | None = None) -> np.ndarray:
    sup = np.arange(v) if support is None else np.asarray(support)
    out = np.zeros(v)
    if style == "onehot":
        out[rng.choice(sup)] = 1.0
        return out
    x = rng.random(len(sup))
    if style == "sparse":
        x[rng.random(len(sup)) < 0.5] = 0.0
    elif style == "tiny":
        mask = rng.random(len(sup)) < 0.5
        x[mask] = rng.choice(_TINY, int(mask.sum()))
    if x.sum() == 0:
        x[rng.integers(len(sup))] = 1.0
    out[sup] = x / x.sum()
    return out / out.sum()


def _with_support(rng: np.random.Generator, x: np.ndarray, k: int) -> np.ndarray:
    """x with at least k nonzero entries (a draft that k distinct siblings can be drawn from)."""
    zeros = np.flatnonzero(x == 0)
    need = k - (x.size - zeros.size)
    if need > 0:
        x = x.copy()
        x[rng.choice(zeros, need, replace=False)] = rng.random(need) + 0.05
        x = x / x.sum()
    return x


def make_toy(v: int, length: int, kind: str, seed: int, min_support: int = 1) -> Toy:
    rng = np.random.default_rng(seed)
    p_levels, q_levels = [], []
    for t in range(length):
        ps, qs = [], []
        for _ in range(v**t):
            sp = sq = STYLES[0]
            sup_p = sup_q = None
            if kind == "disjoint":
                perm = rng.permutation(v)
                cut = int(rng.integers(1, v))
                sup_p, sup_q = perm[:cut], perm[cut:]
            elif kind in ("tiny", "sparse"):
                sp = sq = kind
            elif kind == "onehot_p":
                sp = "onehot"
            elif kind == "onehot_q":
                sq = "onehot"
            elif kind == "mixed":
                sp, sq = rng.choice(STYLES), rng.choice(STYLES)
            p = _vec(rng, v, sp, sup_p)
            q = p.copy() if kind == "equal" else _vec(rng, v, sq, sup_q)
            ps.append(p)
            qs.append(_with_support(rng, q, min_support))
        p_levels.append(torch.tensor(np.array(ps), dtype=F64).reshape((v,) * (t + 1)))
        if t < length - 1:
            q_levels.append(torch.tensor(np.array(qs), dtype=F64).reshape((v,) * (t + 1)))
    return Toy(v, p_levels, q_levels)


# --------------------------------------------------------------------------------------------
# Trees of the toy: batch tensors for given token assignments.
# --------------------------------------------------------------------------------------------


def _ancestry(parents: Sequence[int], j: int) -> list[int]:
    """Nodes from the root's child down to j (inclusive); [] for j = -1."""
    out = []
    while j >= 0:
        out.append(j)
        j = parents[j]
    return out[::-1]


def _lookup(table: torch.Tensor, tokens: torch.Tensor, nodes: Sequence[int]) -> torch.Tensor:
    """(S, V): table[prefix] where the prefix is tokens[:, nodes]."""
    if not nodes:
        return table.expand(tokens.shape[0], table.shape[-1])
    return table[tuple(tokens[:, a] for a in nodes)]


@dataclass
class TreeCase:
    """A tree shared by all rows: real nodes ``parents`` (each marked deterministic or not), then
    ``pad`` padding nodes of garbage; the toy gives every distribution."""

    toy: Toy
    parents: tuple[int, ...]
    det: tuple[bool, ...]
    replacement: bool
    none_draft: bool  # every node deterministic and draft_probs=None (else one-hot rows)
    pad: int = 0
    seed: int = 0

    @property
    def n(self) -> int:
        return len(self.parents)

    def target_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        cols = [self.toy.p[0].expand(tokens.shape[0], self.toy.v)]
        for j in range(self.n):
            anc = _ancestry(self.parents, j)
            cols.append(_lookup(self.toy.p[len(anc)], tokens, anc))
        return torch.stack(cols, dim=1)

    def soft_draft_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """(S, n, V): the draft's q at each node's parent (what a stochastic node is drawn from)."""
        rows = []
        for j in range(self.n):
            anc = _ancestry(self.parents, self.parents[j])
            rows.append(_lookup(self.toy.q[len(anc)], tokens, anc))
        return torch.stack(rows, dim=1)

    def draft_rows(self, tokens: torch.Tensor) -> torch.Tensor | None:
        if self.none_draft:
            return None
        soft = self.soft_draft_rows(tokens)
        one_hot = torch.nn.functional.one_hot(tokens[:, : self.n], self.toy.v).to(F64)
        det = torch.tensor(self.det)[None, :, None]
        return torch.where(det, one_hot, soft)

    def batch(self, tokens: torch.Tensor):
        """(tokens, parents, num_nodes, draft_probs, target) with ``pad`` garbage nodes appended."""
        s, v, n, pad = tokens.shape[0], self.toy.v, self.n, self.pad
        g = torch.Generator().manual_seed(self.seed)
        target, draft = self.target_rows(tokens), self.draft_rows(tokens)
        parents = torch.tensor(self.parents, dtype=torch.long).expand(s, n)
        if pad:
            junk_tok = torch.randint(-3, v + 3, (1, pad), generator=g).expand(s, pad)
            junk_par = torch.randint(-2, n + pad + 1, (1, pad), generator=g).expand(s, pad)
            junk_dist = torch.rand(1, pad, v, generator=g, dtype=F64).expand(s, pad, v)
            junk_dist = junk_dist / junk_dist.sum(-1, keepdim=True)
            tokens = torch.cat([tokens, junk_tok], dim=1)
            parents = torch.cat([parents, junk_par], dim=1)
            target = torch.cat([target, junk_dist], dim=1)
            draft = None if draft is None else torch.cat([draft, junk_dist.flip(-1)], dim=1)
        num_nodes = torch.full((s,), n, dtype=torch.long)
        return tokens, parents.contiguous(), num_nodes, draft, target

    def assignments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Every token assignment of the real nodes with positive probability: (tokens (S, n),
        sampling probability (S,) of the stochastic nodes' tokens, group (S,) = index of the
        deterministic nodes' tokens, number of groups). Stochastic node j is drawn from q at its
        parent, i.i.d. or (replacement=False) conditioned on differing from every earlier sibling."""
        v, n = self.toy.v, self.n
        toks, probs = [], []
        for xs in itertools.product(range(v), repeat=n):
            w = 1.0
            for j in range(n):
                if self.det[j]:
                    continue
                anc = _ancestry(self.parents, self.parents[j])
                q = self.toy.q[len(anc)][tuple(xs[a] for a in anc)].clone()
                if not self.replacement:
                    q[[xs[i] for i in range(j) if self.parents[i] == self.parents[j]]] = 0.0
                    q = q / q.sum()
                w *= float(q[xs[j]])
                if w == 0:
                    break
            if w > 0:
                toks.append(xs)
                probs.append(w)
        tokens = torch.tensor(toks, dtype=torch.long).reshape(-1, n)
        det_cols = [j for j in range(n) if self.det[j]]
        group = torch.zeros(len(toks), dtype=torch.long)
        for c in det_cols:
            group = group * v + tokens[:, c]
        return tokens, torch.tensor(probs, dtype=F64), group, v ** len(det_cols)


# --------------------------------------------------------------------------------------------
# Exact law of a walk, by enumerating the real code.
# --------------------------------------------------------------------------------------------

_U_MAX = 1.0 - 2.0**-53  # the largest value torch.rand(float64) returns
_SEARCH_BITS = 40  # thresholds to 2**-40 ~ 1e-12
_BATCH = 8192  # rows per search call


class _Forced:
    """While active, torch.rand returns ``self.u`` and torch.multinomial records its input (and
    returns token 0), so one call of a walk can be steered and observed."""

    def __init__(self) -> None:
        self.u: torch.Tensor | None = None
        self.captured: list[torch.Tensor] = []

    def _rand(self, *size, generator=None, dtype=None, device=None, **_):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        assert self.u is not None and shape == tuple(self.u.shape), (
            shape,
            None if self.u is None else self.u.shape,
        )
        return self.u.to(dtype or torch.get_default_dtype()).clone()

    def _multinomial(self, probs, num_samples, replacement=False, *, generator=None, **_):
        self.captured.append(probs.detach().to(F64).clone())
        return torch.zeros(probs.shape[0], num_samples, dtype=torch.long)

    def __enter__(self):
        self._patches = [
            mock.patch.object(torch, "rand", self._rand),
            mock.patch.object(torch, "multinomial", self._multinomial),
        ]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self._patches):
            patch.stop()

    def run(self, fn: WalkFn, args, u: torch.Tensor) -> tuple[TreeAcceptance, torch.Tensor]:
        """(the walk's result, the normalised law it handed to torch.multinomial)."""
        self.u, self.captured = u, []
        tokens, parents, num_nodes, draft, target = args
        res = fn(tokens, parents, num_nodes, draft, target, generator=None)
        assert len(self.captured) == 1, "expected exactly one torch.multinomial call"
        dist = self.captured[0]
        assert torch.all(dist >= 0) and torch.all(dist.sum(-1) > 0), f"invalid distribution {dist}"
        return res, dist / dist.sum(-1, keepdim=True)


def _take(args, rows: torch.Tensor):
    return tuple(None if a is None else a[rows] for a in args)


def walk_outcomes(fn: WalkFn, args):
    """Exact law of one call of ``fn`` per row of ``args`` = (tokens, parents, num_nodes,
    draft_probs, target): returns (row, probability, path (K, N), num_accepted (K,), law of
    next_token (K, V)) over every outcome of positive probability.

    Assumes what the walk documents: node j is decided by u[:, j] alone, accepted iff u[:, j] is
    below a threshold that depends only on the earlier decisions, and an accepted node stays on
    the path. The nodes are decided in index order; each branch fixes the earlier uniforms at 0
    (accept) or U_MAX (reject), the threshold of node j is found by a search on the real code.
    """
    s, n = args[0].shape
    row = torch.arange(s)
    forced = torch.full((s, n), _U_MAX, dtype=F64)
    weight = torch.ones(s, dtype=F64)
    with _Forced() as forced_calls:

        def accepted(rows: torch.Tensor, base: torch.Tensor, j: int, uj: torch.Tensor) -> torch.Tensor:
            """(K, m) uniforms for node j on top of ``base`` (K, N) -> (K, m) node j accepted?"""
            k, m = uj.shape
            u = base.repeat_interleave(m, 0)
            u[:, j] = uj.reshape(-1)
            res, _ = forced_calls.run(fn, _take(args, rows.repeat_interleave(m)), u)
            return (res.path == j).any(dim=1).reshape(k, m)

        for j in range(n):
            ends = torch.tensor([[0.0, _U_MAX]], dtype=F64).expand(row.numel(), 2)
            acc = accepted(row, forced, j, ends)
            a = acc[:, 1].to(F64)  # accepted even at the largest u: probability 1
            open_ = acc[:, 0] & ~acc[:, 1]
            if open_.any():
                a[open_] = _threshold(
                    functools.partial(accepted, row[open_], forced[open_], j), int(open_.sum())
                )
            take, skip = a > 0, a < 1
            forced_acc = forced[take].clone()
            forced_acc[:, j] = 0.0
            row = torch.cat([row[take], row[skip]])
            forced = torch.cat([forced_acc, forced[skip]])
            weight = torch.cat([weight[take] * a[take], weight[skip] * (1 - a[skip])])
            keep = weight > 0
            row, forced, weight = row[keep], forced[keep], weight[keep]
        res, dist = forced_calls.run(fn, _take(args, row), forced)
    on_path = torch.zeros(row.numel(), n + 1, dtype=torch.bool)
    on_path.scatter_(1, torch.where(res.path >= 0, res.path, n), True)
    assert torch.equal(on_path[:, :n], forced == 0.0), "path differs from the nodes forced to accept"
    return row, weight, res.path, res.num_accepted, dist


def _threshold(accepted_at: Callable[[torch.Tensor], torch.Tensor], k: int) -> torch.Tensor:
    """sup{u : accepted} for k rows by an m-ary search (the rows' acceptance is monotone in u)."""
    m = max(2, min(64, _BATCH // k))
    rounds = math.ceil(_SEARCH_BITS * math.log(2) / math.log(m + 1))  # interval shrinks (m+1)x a round
    lo, hi = torch.zeros(k, 1, dtype=F64), torch.ones(k, 1, dtype=F64)
    frac = torch.arange(1, m + 1, dtype=F64) / (m + 1)
    for _ in range(rounds):
        grid = lo + (hi - lo) * frac
        acc = accepted_at(grid)
        n_acc = acc.sum(dim=1, keepdim=True)  # monotone: the first n_acc are accepted
        assert torch.equal(acc, torch.arange(m)[None, :] < n_acc), "acceptance is not a threshold in u"
        ext = torch.cat([lo, grid, hi], dim=1)
        lo, hi = ext.gather(1, n_acc), ext.gather(1, n_acc + 1)
    return ((lo + hi) / 2).squeeze(1)


def tree_law(fn: WalkFn, case: TreeCase, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(G,) + (V,)*L: per group of deterministic tokens, the exact law of the first L emitted
    tokens (the call's emission, then the target's continuation). ``tokens``: one fixed assignment
    (a single group, every node then treated as fixed)."""
    toy, v, length = case.toy, case.toy.v, case.toy.length
    if tokens is None:
        tokens, probs, group, num_groups = case.assignments()
    else:
        probs, num_groups = torch.ones(tokens.shape[0], dtype=F64), 1
        group = torch.zeros(tokens.shape[0], dtype=torch.long)
    row, weight, path, n_acc, dist = walk_outcomes(fn, case.batch(tokens))
    law = torch.zeros((num_groups,) + (v,) * length, dtype=F64)
    for k in range(length):
        sel = n_acc == k
        if not sel.any():
            continue
        r, w = row[sel], weight[sel] * probs[row[sel]]
        ys = tokens[r].gather(1, path[sel, :k])  # the accepted tokens
        cont = toy.continuation(k + 1)
        rest = cont[tuple(ys.T)] if k else cont.expand((r.numel(),) + cont.shape)  # (K,) + (V,)*(L-k)
        contrib = (w[:, None] * dist[sel]).reshape((r.numel(), v) + (1,) * (length - k - 1)) * rest
        law.index_put_((group[r],) + tuple(ys.T), contrib, accumulate=True)
    assert not (n_acc >= length).any(), "accepted deeper than the tree"
    return law


def law_error(fn: WalkFn, case: TreeCase) -> float:
    """Max abs difference between the exact law (every group) and the target's."""
    return float((tree_law(fn, case) - case.toy.target_law()).abs().max())


def real(case: TreeCase) -> WalkFn:
    return functools.partial(stochastic_tree_accept, replacement=case.replacement)


# --------------------------------------------------------------------------------------------
# Planted bugs.
# --------------------------------------------------------------------------------------------


def _walk_skeleton(
    tokens, parents, num_nodes, draft_probs, target_probs, *, replacement, generator, update_between_siblings
):
    """stochastic_tree_accept's structure with one swappable piece; with update_between_siblings
    it IS the real walk (checked draw for draw below). Without it every child of a node is judged
    against the node's own p, and if all are rejected the correction comes from the last
    rejected child's residual norm(max(p - D, 0))."""
    b, n = tokens.shape
    v, dtype = target_probs.shape[-1], target_probs.dtype
    valid = torch.arange(n)[None, :] < num_nodes[:, None]
    x_all = torch.where(valid, tokens, 0)
    u = torch.rand((b, n), generator=generator, dtype=dtype)
    cur = torch.full((b,), -1, dtype=torch.long)
    num = torch.zeros(b, dtype=torch.long)
    path = torch.full((b, n), -1, dtype=torch.long)
    base = resid = target_probs[:, 0]
    drawn = torch.zeros(b, v, dtype=torch.bool)
    for j in range(n):
        x = x_all[:, j]
        live = valid[:, j] & (parents[:, j] == cur)
        one_hot = torch.nn.functional.one_hot(x, v).to(dtype)
        if draft_probs is None:
            d = one_hot
        else:
            q = draft_probs[:, j]
            det = (q.gather(1, x[:, None]).squeeze(1) == 1) & ((q > 0).sum(-1) == 1)
            if not replacement:
                q = q.masked_fill(drawn, 0.0)
                total = q.sum(-1, keepdim=True)
                q = torch.where(total > 0, q / torch.where(total > 0, total, 1.0), q)
            d = torch.where(det[:, None], one_hot, q)
        judge = resid if update_between_siblings else base
        acc = live & (u[:, j] * d.gather(1, x[:, None]).squeeze(1) < judge.gather(1, x[:, None]).squeeze(1))
        rej = live & ~acc
        resid = torch.where(
            acc[:, None],
            target_probs[:, j + 1],
            torch.where(rej[:, None], residual_distribution(judge, d), resid),
        )
        base = torch.where(acc[:, None], target_probs[:, j + 1], base)
        path = torch.where(acc[:, None] & (torch.arange(n)[None, :] == num[:, None]), j, path)
        num = num + acc.long()
        cur = torch.where(acc, j, cur)
        drawn = torch.where(acc[:, None], False, drawn | (rej[:, None] & (one_hot > 0)))
    next_token = torch.multinomial(resid, 1, generator=generator).squeeze(1)
    return TreeAcceptance(path, num, next_token, torch.zeros(b, dtype=dtype))


def bug_a_no_sibling_update(case: TreeCase) -> WalkFn:
    """(a) The residual is not updated between siblings: each child is tested against p."""
    return functools.partial(_walk_skeleton, replacement=case.replacement, update_between_siblings=False)


def bug_b_replacement_rule(case: TreeCase) -> WalkFn:
    """(b) Children drawn without replacement, verified with the with-replacement rule."""
    return functools.partial(stochastic_tree_accept, replacement=True)


def bug_c_soft_q_for_deterministic(case: TreeCase) -> WalkFn:
    """(c) Deterministic children (e.g. argmax drafts) handed to the verifier with the draft's
    soft q, so they are accepted with min(1, p/q) and corrected from norm(max(p - q, 0))."""

    def walk(tokens, parents, num_nodes, draft_probs, target_probs, *, generator=None):
        soft = case.soft_draft_rows(tokens)
        if tokens.shape[1] > case.n:  # padding nodes keep their garbage
            filler = (
                draft_probs
                if draft_probs is not None
                else torch.full_like(target_probs[:, 1:], 1 / case.toy.v)
            )
            soft = torch.cat([soft, filler[:, case.n :]], dim=1)
        return stochastic_tree_accept(
            tokens, parents, num_nodes, soft, target_probs, replacement=case.replacement, generator=generator
        )

    return walk


BUGS: dict[str, Callable[[TreeCase], WalkFn]] = {
    "a_no_sibling_update": bug_a_no_sibling_update,
    "b_replacement_rule_without_replacement": bug_b_replacement_rule,
    "c_soft_q_for_deterministic": bug_c_soft_q_for_deterministic,
}


# --------------------------------------------------------------------------------------------
# Hypothesis strategy: small trees of a toy.
# --------------------------------------------------------------------------------------------


@st.composite
def tree_cases(draw, nodes: str, replacement: bool | None = None):
    """nodes: "stochastic" | "deterministic" | "mixed" (each node drawn either way). Depth <=
    MAX_DEPTH, V ** num_nodes <= MAX_ASSIGNMENTS, 0-2 garbage padding nodes; without replacement
    no node has more stochastic-bearing siblings than V (the draws must be possible)."""
    v = draw(st.integers(2, 6), label="V")
    if replacement is None:
        replacement = draw(st.booleans(), label="replacement")
    n_max = min(6, int(math.log(MAX_ASSIGNMENTS + 0.5) / math.log(v)))
    n = draw(st.integers(1, n_max), label="num_nodes")
    cap = v if (not replacement and nodes != "deterministic") else n
    parents: list[int] = []
    depth: list[int] = []
    for _ in range(n):
        options = [
            i
            for i in [-1, *range(len(parents))]
            if (i < 0 or depth[i] < MAX_DEPTH) and parents.count(i) < cap
        ]
        if not options:
            break
        parents.append(draw(st.sampled_from(options), label="parent"))
        depth.append(1 if parents[-1] < 0 else depth[parents[-1]] + 1)
    n = len(parents)
    if nodes == "mixed":
        det = tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n), label="det"))
    else:
        det = (nodes == "deterministic",) * n
    none_draft = all(det) and draw(st.booleans(), label="draft_probs=None")
    siblings = max(parents.count(pj) for pj in parents)
    toy = make_toy(
        v,
        max(depth) + 1,
        draw(st.sampled_from(KINDS), label="kind"),
        draw(st.integers(0, 2**32 - 1), label="seed"),
        min_support=1 if replacement else min(siblings, v),
    )
    pad = draw(st.integers(0, 2), label="padding nodes")
    return TreeCase(toy, tuple(parents), det, replacement, none_draft, pad, seed=v * 7 + n)


EXACT_SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# 1. Exact laws of the real walk.
# --------------------------------------------------------------------------------------------


@EXACT_SETTINGS
@given(tree_cases("stochastic", replacement=True))
def test_exact_law_stochastic_with_replacement(case):
    """Siblings drawn i.i.d. from q: the first L emitted tokens have exactly the target's law."""
    assert law_error(real(case), case) < EXACT_TOL


@EXACT_SETTINGS
@given(tree_cases("stochastic", replacement=False))
def test_exact_law_stochastic_without_replacement(case):
    """Siblings drawn sequentially without replacement, replacement=False: exact."""
    assert law_error(real(case), case) < EXACT_TOL


@EXACT_SETTINGS
@given(tree_cases("deterministic"))
def test_exact_law_deterministic_every_token_set(case):
    """For EVERY fixed token set (duplicates, p = 0 tokens; draft_probs None or one-hot rows,
    either replacement flag) the output law is exactly the target's."""
    assert law_error(real(case), case) < EXACT_TOL


@EXACT_SETTINGS
@given(tree_cases("mixed"))
def test_exact_law_mixed_tree(case):
    """Deterministic (one-hot) and stochastic siblings in one tree: exact for every choice of the
    deterministic tokens (without replacement, stochastic nodes avoid every earlier sibling)."""
    assert law_error(real(case), case) < EXACT_TOL


@pytest.mark.parametrize("replacement", [True, False])
def test_exact_law_chain_depth_3(replacement):
    """A 3-node chain (one child per node) with the 4-token law: exact in both modes."""
    toy = make_toy(3, 4, "random", seed=11)
    case = TreeCase(toy, (-1, 0, 1), (False,) * 3, replacement, False)
    assert law_error(real(case), case) < EXACT_TOL


# --------------------------------------------------------------------------------------------
# 2. Sampled frequencies (chi-square) on the planted 2-level tree.
# --------------------------------------------------------------------------------------------

PLANTED_PARENTS = (-1, -1, -1, 0, 0, 1)  # root: 3 children; node 0 has 2 children, node 1 one
FIXED_TOKENS = (2, 2, 0, 1, 3, 3)  # deterministic configs: a duplicate sibling, a p = 0 token


def _planted_toy() -> Toy:
    toy = make_toy(4, 3, "random", seed=2024)
    toy.p[0] = torch.tensor([0.10, 0.20, 0.30, 0.40], dtype=F64)
    toy.q[0] = torch.tensor([0.55, 0.30, 0.10, 0.05], dtype=F64)
    toy.p[1][2] = torch.tensor([0.50, 0.00, 0.20, 0.30], dtype=F64)  # FIXED_TOKENS[3] has p = 0
    return toy


PLANTED_TOY = _planted_toy()
# name -> (deterministic?, replacement, draft_probs None?)
CONFIGS = {
    "with_replacement": (False, True, False),
    "without_replacement": (False, False, False),
    "deterministic": (True, True, True),
    "deterministic_onehot_rows": (True, False, False),
}


def planted_case(config: str) -> TreeCase:
    det, replacement, none_draft = CONFIGS[config]
    return TreeCase(PLANTED_TOY, PLANTED_PARENTS, (det,) * 6, replacement, none_draft, pad=1, seed=3)


def sample_emitted(fn: WalkFn, case: TreeCase, rows: int, seed: int) -> np.ndarray:
    """(rows, L) first L tokens of ``rows`` independent generations: drafts sampled for real
    (torch.multinomial; without replacement = one draw at a time, earlier siblings removed) or the
    FIXED_TOKENS, one call of ``fn``, then the target's continuation."""
    g = torch.Generator().manual_seed(seed)
    toy, n, v, length = case.toy, case.n, case.toy.v, case.toy.length
    if all(case.det):
        tokens = torch.tensor(FIXED_TOKENS, dtype=torch.long).expand(rows, n).clone()
    else:
        tokens = torch.zeros(rows, n, dtype=torch.long)
        for j in range(n):
            anc = _ancestry(case.parents, case.parents[j])
            q = _lookup(toy.q[len(anc)], tokens, anc).clone()
            if not case.replacement:
                for i in range(j):
                    if case.parents[i] == case.parents[j]:
                        q.scatter_(1, tokens[:, i : i + 1], 0.0)
            tokens[:, j] = torch.multinomial(q, 1, generator=g).squeeze(1)
    tok, parents, num_nodes, draft, target = case.batch(tokens)
    res = fn(tok, parents, num_nodes, draft, target, generator=g)
    emitted = res.emitted(tok)
    seq = torch.full((rows, length), -1, dtype=torch.long)
    for t in range(length):
        law = toy.p[t][tuple(seq[:, :t].T)] if t else toy.p[0].expand(rows, v)
        cont = torch.multinomial(law, 1, generator=g).squeeze(1)
        seq[:, t] = torch.where(t <= res.num_accepted, emitted[:, t], cont)
    return seq.numpy()


def chi_square_for(fn: WalkFn, case: TreeCase, seed: int = 1234) -> dict[str, float]:
    """p-values of the first token, the first two and the first three against the target."""
    seqs = sample_emitted(fn, case, B, seed)
    v, law = case.toy.v, case.toy.target_law().numpy()
    out = {}
    for r, name in [(1, "first"), (2, "first_two"), (3, "first_three")]:
        cells = np.ravel_multi_index(tuple(seqs[:, :r].T), (v,) * r)
        marginal = law.sum(axis=tuple(range(r, law.ndim)))
        out[name] = chi_square_pvalue(counts(cells, v**r), marginal.ravel())
    return out


def exact_tv_for(fn: WalkFn, case: TreeCase) -> float:
    """TV between fn's exact law (all draws, or the FIXED_TOKENS) and the target's."""
    fixed = torch.tensor([FIXED_TOKENS]) if all(case.det) else None
    law = tree_law(fn, case, fixed)
    return max(total_variation(g.numpy(), case.toy.target_law().numpy()) for g in law)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_chi_square_real(config):
    """The real walk on the planted tree: exact law is the target; sampled frequencies pass all
    three chi-square tests (false-positive rate ALPHA each)."""
    case = planted_case(config)
    assert exact_tv_for(real(case), case) < EXACT_TOL
    pvalues = chi_square_for(real(case), case)
    assert min(pvalues.values()) > ALPHA, f"{config}: {pvalues}"


# --------------------------------------------------------------------------------------------
# 3. Planted bugs must be rejected by the same checks.
# --------------------------------------------------------------------------------------------

PLANTED = [
    ("a_no_sibling_update", "with_replacement"),
    ("a_no_sibling_update", "without_replacement"),
    ("a_no_sibling_update", "deterministic"),
    ("b_replacement_rule_without_replacement", "without_replacement"),
    ("c_soft_q_for_deterministic", "deterministic"),
]  # (c) with replacement=False and the duplicate FIXED_TOKENS raises ValueError instead


@pytest.mark.parametrize(("bug", "config"), PLANTED)
def test_planted_bug_rejected_by_exact_law_and_chi_square(bug, config):
    """A planted bug's exact law is >= MIN_PLANTED_TV from the target (a bias the sample size can
    see), and the chi-square test of test_chi_square_real (same seed, same size) rejects it."""
    case = planted_case(config)
    fn = BUGS[bug](case)
    tv = exact_tv_for(fn, case)
    assert tv >= MIN_PLANTED_TV, f"{bug}/{config}: planted bias too small to be a fair test (TV {tv:.4f})"
    pvalues = chi_square_for(fn, case)
    assert min(pvalues.values()) < ALPHA, (
        f"{bug}/{config}: chi-square failed to reject ({pvalues}, TV {tv:.4f})"
    )


# No shrinking: the first counterexample shows that the property rejects the bug.
_FIND_SETTINGS = settings(
    deadline=None, max_examples=300, database=None, derandomize=True, phases=[Phase.generate]
)
BUG_PROPERTIES = {
    "a_no_sibling_update": tree_cases("stochastic", replacement=True),
    "b_replacement_rule_without_replacement": tree_cases("stochastic", replacement=False),
    "c_soft_q_for_deterministic": tree_cases("deterministic"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_falsified_by_exact_property(bug):
    """The exact-law property of section 1 finds a counterexample for every planted bug."""
    found = find(BUG_PROPERTIES[bug], lambda c: law_error(BUGS[bug](c), c) > 1e-6, settings=_FIND_SETTINGS)
    assert law_error(BUGS[bug](found), found) > 1e-6


def _random_walk_inputs(seed: int, b: int = 300, n: int = 7, v: int = 8):
    """Random trees (rows of different sizes, padding), p with zeros, q with full support, tokens
    drawn without replacement within each sibling group (valid for either flag), ~30% one-hot rows."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((b, n), -1, dtype=torch.long)
    for j in range(1, n):
        parents[:, j] = torch.randint(-1, j, (b,), generator=g)
    num_nodes = torch.randint(0, n + 1, (b,), generator=g)
    target = torch.rand(b, n + 1, v, generator=g, dtype=F64) * (torch.rand(b, n + 1, v, generator=g) < 0.8)
    target[..., 0] += 1e-3
    target = target / target.sum(-1, keepdim=True)
    draft = torch.rand(b, n, v, generator=g, dtype=F64) + 1e-3
    draft = draft / draft.sum(-1, keepdim=True)
    tokens = torch.zeros(b, n, dtype=torch.long)
    rows = torch.arange(b)
    for j in range(n):
        q = draft[:, j].clone()
        for i in range(j):
            same = parents[:, i] == parents[:, j]
            q[rows[same], tokens[same, i]] = 0.0
        tokens[:, j] = torch.multinomial(q, 1, generator=g).squeeze(1)
    one_hot = torch.rand(b, n, 1, generator=g) < 0.3
    draft = torch.where(one_hot, torch.nn.functional.one_hot(tokens, v).to(F64), draft)
    return tokens, parents, num_nodes, draft, target


@pytest.mark.parametrize("replacement", [True, False])
def test_skeleton_is_the_real_walk_with_correct_pieces(replacement):
    """Harness sanity: the bugs' skeleton with the correct piece equals the real walk draw for draw,
    so bug (a)'s failures come from the planted change alone."""
    tokens, parents, num_nodes, draft, target = _random_walk_inputs(0)
    for dp in (draft, None):
        a = stochastic_tree_accept(
            tokens,
            parents,
            num_nodes,
            dp,
            target,
            replacement=replacement,
            generator=torch.Generator().manual_seed(1),
        )
        b = _walk_skeleton(
            tokens,
            parents,
            num_nodes,
            dp,
            target,
            replacement=replacement,
            generator=torch.Generator().manual_seed(1),
            update_between_siblings=True,
        )
        assert torch.equal(a.path, b.path) and torch.equal(a.next_token, b.next_token)
        assert torch.equal(a.num_accepted, b.num_accepted)


# --------------------------------------------------------------------------------------------
# 4. Chains: the tree walks are the chain rules.
# --------------------------------------------------------------------------------------------


@st.composite
def chain_inputs(draw):
    """Random chain problems: p/q with zeros, one-hot and tiny rows, float32 or float64, draft
    ids from q or arbitrary, per-row num_drafts."""
    b = draw(st.integers(1, 6))
    k = draw(st.integers(0, 5))
    v = draw(st.integers(2, 7))
    dtype = draw(st.sampled_from([F64, torch.float32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = torch.tensor(np.array([[_vec(rng, v, rng.choice(STYLES)) for _ in range(k + 1)] for _ in range(b)]))
    q = torch.tensor(np.array([[_vec(rng, v, rng.choice(STYLES)) for _ in range(k)] for _ in range(b)]))
    q = q.reshape(b, k, v)
    if k and draw(st.booleans()):
        ids = torch.multinomial(q.reshape(b * k, v), 1).reshape(b, k)
    else:
        ids = torch.tensor(rng.integers(0, v, (b, k)), dtype=torch.long)
    nd = torch.tensor(rng.integers(0, k + 1, b), dtype=torch.long)
    reps = 32  # every row many times, to exercise the random branches
    return (
        ids.repeat(reps, 1),
        nd.repeat(reps),
        q.to(dtype).repeat(reps, 1, 1),
        p.to(dtype).repeat(reps, 1, 1),
    )


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(chain_inputs(), st.integers(0, 2**32 - 1))
def test_chain_equals_speculative_accept_draw_for_draw(inputs, seed):
    """On a chain, stochastic_tree_accept (either flag: no siblings) returns exactly what
    speculative_accept returns with the same generator -- so it inherits its exact law."""
    ids, nd, q, p = inputs
    parents = chain_parents(*ids.shape)
    for dp in (q, None):
        n_ref, next_ref = speculative_accept(ids, nd, dp, p, generator=torch.Generator().manual_seed(seed))
        for replacement in (True, False):
            res = stochastic_tree_accept(
                ids,
                parents,
                nd,
                dp,
                p,
                replacement=replacement,
                generator=torch.Generator().manual_seed(seed),
            )
            assert torch.equal(res.num_accepted, n_ref) and torch.equal(res.next_token, next_ref)
            cols = torch.arange(ids.shape[1])[None, :]
            assert torch.equal(res.path, torch.where(cols < n_ref[:, None], cols, -1))
    n_ref, next_ref = greedy_accept(ids, nd, p.log())
    res = greedy_tree_accept(ids, parents, nd, p.log())
    assert torch.equal(res.num_accepted, n_ref) and torch.equal(res.next_token, next_ref)


# --------------------------------------------------------------------------------------------
# 5. Greedy walks.
# --------------------------------------------------------------------------------------------


def _scores(argmax_per_column: Sequence[int], v: int, seed: int = 0) -> torch.Tensor:
    """(N+1, V) processed scores with the given argmax per column; some tokens at -inf."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(len(argmax_per_column), v, generator=g)
    s[:, torch.arange(v) % 4 == 3] = float("-inf")
    s[torch.arange(len(argmax_per_column)), list(argmax_per_column)] = 10.0
    return s


GREEDY_TREES = [
    # (tokens, parents, num_nodes, argmax per column (N+1), expected path, expected next_token)
    # branching: the second root child matches, then its second child, then a leaf: bonus
    ([5, 3, 7, 2, 4], [-1, -1, 0, 1, 1], 5, [3, 7, 4, 0, 1, 6], [1, 4], 6),
    # duplicates: the first matching child wins; a cousin with the wanted token does not count
    ([3, 3, 1, 2], [-1, -1, 1, 0], 4, [3, 1, 1, 0, 0], [0], 1),
    # padding ignored: node 2 (garbage, child of 0 with the wanted token) and node 3 are padding
    ([1, 2, 4, -5], [-1, 0, 0, 7], 2, [1, 4, 0, 0, 0], [0], 4),
    # num_nodes = 0: a plain greedy step from column 0
    ([1, 2, 3, 4], [-1, 0, 1, 2], 0, [1, 2, 3, 4, 5], [], 1),
    # a chain fully accepted: bonus from the last column
    ([1, 2, 3, 4], [-1, 0, 1, 2], 4, [1, 2, 3, 4, 5], [0, 1, 2, 3], 5),
    # no root child matches
    ([0, 2, 4, 6], [-1, -1, 0, 1], 4, [1, 0, 4, 6, 0], [], 1),
    # deep branch: root -> node 2 -> node 3 -> node 5 (node 4 is a sibling of 3 with the same token)
    ([9, 8, 7, 6, 6, 5], [-1, -1, -1, 2, 2, 3], 6, [7, 0, 0, 6, 5, 0, 2], [2, 3, 5], 2),
]


def test_greedy_hand_built_trees():
    """Greedy walks on hand-built trees in ONE padded batch (rows of different sizes); expected
    paths and tokens worked out by hand."""
    v, n = 10, max(len(c[0]) for c in GREEDY_TREES)
    tokens = torch.tensor([c[0] + [0] * (n - len(c[0])) for c in GREEDY_TREES])
    parents = torch.tensor([c[1] + [9] * (n - len(c[1])) for c in GREEDY_TREES])
    num_nodes = torch.tensor([c[2] for c in GREEDY_TREES])
    scores = torch.stack(
        [
            torch.cat([_scores(c[3], v, seed=i), torch.zeros(n + 1 - len(c[3]), v)])
            for i, c in enumerate(GREEDY_TREES)
        ]
    )
    res = greedy_tree_accept(tokens, parents, num_nodes, scores)
    assert res.path.shape == (len(GREEDY_TREES), n)
    assert res.path.tolist() == [c[4] + [-1] * (n - len(c[4])) for c in GREEDY_TREES]
    assert res.num_accepted.tolist() == [len(c[4]) for c in GREEDY_TREES]
    assert res.next_token.tolist() == [c[5] for c in GREEDY_TREES]
    assert torch.equal(res.log_weight, torch.zeros(len(GREEDY_TREES)))
    emitted = res.emitted(tokens)
    for r, c in enumerate(GREEDY_TREES):
        want = [c[0][j] for j in c[4]] + [c[5]]
        assert emitted[r].tolist() == want + [-1] * (n + 1 - len(want))


def _greedy_reference(
    tokens: list[int], parents: list[int], n: int, best: list[int]
) -> tuple[list[int], int]:
    cur, path = -1, []
    while True:
        match = [j for j in range(n) if parents[j] == cur and tokens[j] == best[cur + 1]]
        if not match:
            return path, best[cur + 1]
        cur = match[0]
        path.append(cur)


@st.composite
def random_trees(draw, max_nodes: int = 10, v: int = 3):
    """(tokens, parents, num_nodes) of 1..5 rows: random topologically ordered trees with garbage
    padding (tokens out of range, parents not before the node)."""
    b = draw(st.integers(1, 5))
    n = draw(st.integers(0, max_nodes))
    num_nodes = draw(st.lists(st.integers(0, n), min_size=b, max_size=b))
    tokens, parents = [], []
    for r in range(b):
        par = [draw(st.integers(-1, j - 1)) for j in range(num_nodes[r])]
        par += [draw(st.integers(-3, n + 3)) for _ in range(n - num_nodes[r])]
        tok = [draw(st.integers(0, v - 1)) for _ in range(num_nodes[r])]
        tok += [draw(st.integers(-5, v + 5)) for _ in range(n - num_nodes[r])]
        tokens.append(tok)
        parents.append(par)
    as_t = functools.partial(torch.tensor, dtype=torch.long)
    return as_t(tokens).reshape(b, n), as_t(parents).reshape(b, n), as_t(num_nodes)


@settings(deadline=None, max_examples=200)
@given(random_trees(), st.integers(0, 2**16))
def test_greedy_matches_reference_walk(tree, seed):
    """Random trees (V = 3, so matches are common): the walk is the one a per-row reference
    finds (first matching child, descend, argmax at the last accepted node)."""
    tokens, parents, num_nodes = tree
    b, n = tokens.shape
    scores = torch.randn(b, n + 1, 3, generator=torch.Generator().manual_seed(seed))
    res = greedy_tree_accept(tokens, parents, num_nodes, scores)
    best = scores.argmax(-1)
    for r in range(b):
        path, nxt = _greedy_reference(
            tokens[r].tolist(), parents[r].tolist(), int(num_nodes[r]), best[r].tolist()
        )
        assert res.path[r].tolist() == path + [-1] * (n - len(path))
        assert int(res.num_accepted[r]) == len(path) and int(res.next_token[r]) == nxt


# --------------------------------------------------------------------------------------------
# 6. Well-formed outputs, the replacement=False check, helpers.
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(random_trees(max_nodes=8, v=4), st.integers(0, 2**32 - 1), st.sampled_from([F64, torch.float32]))
def test_stochastic_outputs_always_well_formed(tree, seed, dtype):
    """Arbitrary trees, tokens (even with q(x) = 0 or p(x) = 0), p/q with zeros: the path is a
    root-down chain of real nodes, accepted tokens have target mass > 0 at their parent's column,
    next_token has target mass > 0 at the last accepted node's column, log_weight is 0."""
    tokens, parents, num_nodes = tree
    b, n = tokens.shape
    g = torch.Generator().manual_seed(seed)
    reps = 16
    tokens, parents, num_nodes = tokens.repeat(reps, 1), parents.repeat(reps, 1), num_nodes.repeat(reps)
    target = torch.rand(b * reps, n + 1, 4, generator=g, dtype=F64) * (
        torch.rand(b * reps, n + 1, 4, generator=g) < 0.6
    )
    target[..., 0] += 1e-30
    target = (target / target.sum(-1, keepdim=True)).to(dtype)
    draft = torch.rand(b * reps, n, 4, generator=g, dtype=F64) * (
        torch.rand(b * reps, n, 4, generator=g) < 0.6
    )
    draft[..., 1] += 1e-12
    draft = (draft / draft.sum(-1, keepdim=True)).to(dtype)
    for dp, replacement in ((draft, True), (None, True), (None, False)):
        res = stochastic_tree_accept(
            tokens, parents, num_nodes, dp, target, replacement=replacement, generator=g
        )
        assert res.path.dtype == res.num_accepted.dtype == res.next_token.dtype == torch.long
        assert torch.all(res.log_weight == 0)
        for r in range(b * reps):
            k, cur = int(res.num_accepted[r]), -1
            assert torch.all(res.path[r, k:] == -1)
            for node in res.path[r, :k].tolist():
                assert 0 <= node < int(num_nodes[r]) and int(parents[r, node]) == cur
                assert target[r, cur + 1, tokens[r, node]] > 0, "accepted a token of target mass 0"
                cur = node
            assert target[r, cur + 1, res.next_token[r]] > 0, "next_token has target mass 0"


def test_without_replacement_check():
    """replacement=False rejects stochastic siblings that repeat a token (they cannot come from
    draws without replacement), but not deterministic (one-hot) repeats, cousins with equal
    tokens, repeats in padding, or anything with replacement=True."""
    v = 4
    target = torch.full((1, 5, v), 1 / v, dtype=F64)
    soft = torch.full((1, 4, v), 1 / v, dtype=F64)
    parents = torch.tensor([[-1, -1, 0, 1]])
    num_nodes = torch.tensor([4])
    dup = torch.tensor([[2, 2, 1, 3]])
    with pytest.raises(ValueError, match="replacement=False"):
        stochastic_tree_accept(dup, parents, num_nodes, soft, target, replacement=False)
    stochastic_tree_accept(dup, parents, num_nodes, soft, target, replacement=True)
    one_hot = soft.clone()
    one_hot[0, 1] = torch.nn.functional.one_hot(torch.tensor(2), v)
    stochastic_tree_accept(dup, parents, num_nodes, one_hot, target, replacement=False)
    stochastic_tree_accept(dup, parents, num_nodes, None, target, replacement=False)
    cousins = torch.tensor([[2, 1, 3, 3]])
    stochastic_tree_accept(cousins, parents, num_nodes, soft, target, replacement=False)
    stochastic_tree_accept(dup, parents, torch.tensor([1]), soft, target, replacement=False)


def test_one_hot_rows_are_deterministic():
    """One-hot draft rows give draw for draw what draft_probs=None gives, in both modes."""
    tokens, parents, num_nodes, _, target = _random_walk_inputs(3)
    dp = torch.nn.functional.one_hot(tokens, target.shape[-1]).to(F64)
    tokens[:, 1] = tokens[:, 0]  # duplicates are fine for deterministic nodes
    dp[:, 1] = dp[:, 0]
    for replacement in (True, False):
        a = stochastic_tree_accept(
            tokens,
            parents,
            num_nodes,
            dp,
            target,
            replacement=replacement,
            generator=torch.Generator().manual_seed(5),
        )
        b = stochastic_tree_accept(
            tokens,
            parents,
            num_nodes,
            None,
            target,
            replacement=replacement,
            generator=torch.Generator().manual_seed(5),
        )
        assert torch.equal(a.path, b.path) and torch.equal(a.next_token, b.next_token)


def test_invalid_trees_are_refused():
    """Shape and tree invariants are asserted at the top (for real nodes only)."""
    target = torch.full((1, 3, 4), 0.25)
    ok = dict(tokens=torch.tensor([[1, 2]]), parents=torch.tensor([[-1, 0]]), num_nodes=torch.tensor([2]))
    greedy_tree_accept(ok["tokens"], ok["parents"], ok["num_nodes"], target)
    bad_cases = [
        dict(ok, parents=torch.tensor([[-1, 1]])),  # not topological
        dict(ok, parents=torch.tensor([[-2, 0]])),
        dict(ok, tokens=torch.tensor([[1, 4]])),  # token outside the vocabulary
        dict(ok, num_nodes=torch.tensor([3])),
        dict(ok, parents=torch.tensor([[-1, 0, 1]])),
    ]
    for case in bad_cases:
        with pytest.raises(AssertionError):
            greedy_tree_accept(case["tokens"], case["parents"], case["num_nodes"], target)
        with pytest.raises(AssertionError):
            stochastic_tree_accept(case["tokens"], case["parents"], case["num_nodes"], None, target)
    with pytest.raises(AssertionError):
        stochastic_tree_accept(
            ok["tokens"], ok["parents"], ok["num_nodes"], torch.full((1, 2, 3), 1 / 3), target
        )


def test_empty_and_zero_node_batches():
    """N = 0 (a plain step from column 0) and B = 0."""
    probs = torch.tensor([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]])
    empty = torch.zeros(2, 0, dtype=torch.long)
    zeros = torch.zeros(2, dtype=torch.long)
    for res in (
        greedy_tree_accept(empty, empty, zeros, probs),
        stochastic_tree_accept(empty, empty, zeros, None, probs),
        stochastic_tree_accept(empty, empty, zeros, torch.zeros(2, 0, 3), probs, replacement=False),
    ):
        assert res.path.shape == (2, 0) and res.num_accepted.tolist() == [0, 0]
        assert res.next_token.tolist() == [1, 2]
    none = torch.zeros(0, 3, dtype=torch.long)
    res = stochastic_tree_accept(none, none, torch.zeros(0, dtype=torch.long), None, torch.zeros(0, 4, 5))
    assert res.next_token.shape == (0,) and res.path.shape == (0, 3)


def test_helpers():
    """chain_parents and tree_depths (root children at depth 1, padding 0)."""
    assert chain_parents(2, 3).tolist() == [[-1, 0, 1], [-1, 0, 1]]
    assert chain_parents(1, 0).shape == (1, 0)
    parents = torch.tensor([[-1, -1, 0, 2, 1, 7], [-1, 0, 1, 2, -1, 0]])
    assert tree_depths(parents, torch.tensor([5, 6])).tolist() == [[1, 1, 2, 3, 2, 0], [1, 2, 3, 4, 1, 2]]


def test_generator_makes_it_reproducible():
    """Same generator seed, same outputs (the chi-square tests rely on it)."""
    case = planted_case("without_replacement")
    a = sample_emitted(real(case), case, 2000, seed=5)
    b = sample_emitted(real(case), case, 2000, seed=5)
    assert np.array_equal(a, b) and a.min() >= 0
