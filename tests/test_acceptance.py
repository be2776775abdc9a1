"""The acceptance math of ``hfspec.acceptance`` is lossless, and these tests can tell when it is not.

Three independent kinds of evidence (DESIGN.md §4, §7):

1. **Exact laws.** ``exact_law`` computes the *exact* joint distribution of the first k+1
   emitted tokens of speculative decoding with an acceptance function, for a toy "model" whose
   target/draft distribution at absolute position t is p[t]/q[t] (position-dependent, so a rule
   that reads the wrong position fails). It runs the REAL function on every draft sequence with
   ``torch.rand`` replaced by chosen uniforms (the acceptance probability of each position is
   found by a search on the uniform: it is the real comparison's threshold, not a formula) and
   ``torch.multinomial`` replaced by a recorder (so the correction/bonus distribution is the one
   the real code builds, ``residual_distribution`` included). Hypothesis checks, in float64 to
   1e-9, that this law is exactly p[0] x p[1] x ... x p[k] -- the first token is p[0], the
   second is p[1] whatever the first was, etc. -- for stochastic drafts (x ~ q, k = 1 and a
   k = 2 chain) and for EVERY fixed deterministic draft (``draft_probs=None``), over random,
   disjoint-support, one-hot p, one-hot q, q == p and near-zero-mass (1e-12 ... 5e-324) cases,
   V in 2..8.
2. **Sampled frequencies.** The real ``speculative_accept`` is run on B = 200,000 independent
   generations (drafts sampled from q by ``torch.multinomial``, seeded ``torch.Generator``, k = 1
   and k = 3 with per-row, per-call num_drafts) and Pearson chi-square tests
   (``hfspec.testing_dist.chi_square_pvalue``) compare the first emitted token with p[0] and the
   first k+1 emitted tokens with p[0] x .. x p[k]. **False-positive rate:** each chi-square test
   rejects at ``ALPHA = 1e-4``; for a correct sampler its p-value is uniform, so it fails with
   probability 1e-4 over the choice of seed (< 2e-3 for the ~12 tests of the real code in this
   file). Seeds are fixed, so the suite is deterministic.
3. **Planted bugs.** Four broken twins of ``speculative_accept`` (below) must be rejected by the
   SAME checks: the hypothesis property finds a counterexample, the exact law on a fixed planted
   case is at total variation >= 0.02 from the target (a bias the sample size can see), and the
   chi-square p-value is < ALPHA. A distribution test that cannot fail is worthless.

Plus hand-built greedy tables (vLLM rejection-sampler style), k = 0, and a hypothesis property
that outputs are always well-formed (0 <= num_accepted <= num_drafts, never a token of target
mass 0, also for disjoint supports, near-zero mass and float32).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from hfspec.acceptance import greedy_accept, residual_distribution, speculative_accept
from hfspec.testing_dist import chi_square_pvalue, counts, total_variation

AcceptFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

ALPHA = 1e-4  # per chi-square test; see the module docstring
B = 200_000  # rows per chi-square run
EXACT_TOL = 1e-9
MIN_PLANTED_TV = 0.02
F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Planted bugs: same signature as speculative_accept.
# --------------------------------------------------------------------------------------------


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=-1, keepdim=True)


def _skeleton(
    draft_ids: torch.Tensor,
    num_drafts: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    generator: torch.Generator | None,
    accept_threshold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reject_dist: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """speculative_accept's structure with swappable pieces: accept iff u < threshold(p(x), q(x));
    on the first reject sample ``reject_dist(p, q)``; one ``torch.rand`` and one ``torch.multinomial``
    call, like the real function, so ``exact_law`` can enumerate it the same way."""
    b, k = draft_ids.shape
    v = target_probs.shape[-1]
    rows = torch.arange(b)
    q_full = (
        draft_probs
        if draft_probs is not None
        else torch.nn.functional.one_hot(draft_ids, v).to(target_probs.dtype)
    )
    p_x = target_probs[:, :k].gather(-1, draft_ids[..., None]).squeeze(-1)
    q_x = q_full.gather(-1, draft_ids[..., None]).squeeze(-1)
    u = torch.rand(p_x.shape, generator=generator, dtype=p_x.dtype)
    valid = torch.arange(k)[None, :] < num_drafts[:, None]
    n = torch.cumprod(((u < accept_threshold(p_x, q_x)) & valid).long(), dim=1).sum(dim=1)
    p_next = target_probs[rows, n]
    if k > 0:
        at = n.clamp_max(k - 1)
        wrong = reject_dist(p_next, q_full[rows, at])
        p_next = torch.where((n < num_drafts)[:, None], wrong, p_next)
    return n, torch.multinomial(p_next, 1, generator=generator).squeeze(1)


def bug_a_resample_from_p(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
    """Accept with prob min(1, p/q), but on reject resample from p instead of the residual."""
    return _skeleton(
        draft_ids, num_drafts, draft_probs, target_probs, generator=generator,
        accept_threshold=lambda p, q: p / q,
        reject_dist=lambda p, q: p,
    )  # fmt: skip


def bug_b_q_ignored_in_acceptance(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
    """Residual is right, but a sampled draft is accepted with prob p(x) as if it were deterministic."""
    return _skeleton(
        draft_ids, num_drafts, draft_probs, target_probs, generator=generator,
        accept_threshold=lambda p, q: p,
        reject_dist=residual_distribution,
    )  # fmt: skip


def _untemper(q_t: torch.Tensor) -> torch.Tensor:
    """The raw q whose temperature-0.5 version is q_t (q_t = norm(q**2)  =>  q = norm(sqrt(q_t)))."""
    return _norm(q_t.sqrt())


def bug_c_q_before_processors(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
    """Drafts were sampled from the processed q_T (temperature 0.5) = ``draft_probs``, but the
    verifier is handed the raw, unprocessed q (HF #47932 / DeepSpec #31 class of bug)."""
    raw = None if draft_probs is None else _untemper(draft_probs)
    return speculative_accept(draft_ids, num_drafts, raw, target_probs, generator=generator)


def bug_d_unclamped_residual(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
    """Residual not clamped at 0: norm(|p - q|), a valid distribution but the wrong one."""
    return _skeleton(
        draft_ids, num_drafts, draft_probs, target_probs, generator=generator,
        accept_threshold=lambda p, q: p / q,
        reject_dist=_abs_residual,
    )  # fmt: skip


def _abs_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r = (p - q).abs()
    total = r.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), p)


BUGS: dict[str, AcceptFn] = {
    "a_resample_from_p": bug_a_resample_from_p,
    "b_q_ignored_in_acceptance": bug_b_q_ignored_in_acceptance,
    "c_q_before_processors": bug_c_q_before_processors,
    "d_unclamped_residual": bug_d_unclamped_residual,
}
# With a one-hot q (draft_probs=None) bug b IS the correct deterministic rule and bug c does not
# apply; a and d stay wrong.
DETERMINISTIC_BUGS = ["a_resample_from_p", "d_unclamped_residual"]


# --------------------------------------------------------------------------------------------
# Exact law of an acceptance function, by enumerating the real code.
# --------------------------------------------------------------------------------------------

_U_MAX = 1.0 - 2.0**-53  # the largest value torch.rand(float64) returns
_SEARCH_BITS = 50  # thresholds to 2**-50 ~ 1e-15


class _Forced:
    """While active, torch.rand returns ``self.u`` and torch.multinomial records its input (and
    returns token 0), so one call of an acceptance function can be steered and observed."""

    def __init__(self) -> None:
        self.u: torch.Tensor | None = None
        self.captured: list[torch.Tensor] = []

    def _rand(self, *size, generator=None, dtype=None, device=None, **_):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        assert self.u is not None and shape == tuple(self.u.shape), (shape, self.u)
        return self.u.to(dtype or torch.get_default_dtype()).clone()

    def _multinomial(self, probs, num_samples, replacement=False, *, generator=None, **_):
        self.captured.append(probs.detach().to(F64).clone())
        return torch.zeros(probs.shape[0], num_samples, dtype=torch.long)

    def __enter__(self):
        # Thousands of tiny ops: one intra-op thread is ~5x faster on a shared 2-core machine.
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
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
        torch.set_num_threads(self._threads)

    def run(self, fn: AcceptFn, draft_ids, num_drafts, draft_probs, target, u: torch.Tensor):
        """(num_accepted, the normalised distribution fn handed to torch.multinomial)."""
        self.u, self.captured = u, []
        n, _ = fn(draft_ids, num_drafts, draft_probs, target, generator=None)
        assert len(self.captured) == 1, "expected exactly one torch.multinomial call"
        dist = self.captured[0]
        assert torch.all(dist >= 0) and torch.all(dist.sum(-1) > 0), f"invalid distribution {dist}"
        return n, dist / dist.sum(-1, keepdim=True)


def _step_outcomes(fn: AcceptFn, target, draft_probs, seqs: Sequence[tuple[int, ...]], num_drafts: int):
    """Exact law of one call of ``fn`` per draft sequence: for row s a list of
    (probability, num_accepted, law of next_token).

    Assumes (true of every chain rule here) that position j is accepted iff its uniform is
    below a threshold that does not depend on the other uniforms; the threshold is found by a
    search on the real code (to ~1e-15), so the acceptance probability is the real comparison's.
    """
    k, v = target.shape[0] - 1, target.shape[1]
    s = len(seqs)
    m = max(2, min(32, 512 // s))  # uniforms tried per row and search round (batch ~512 rows)
    rounds = math.ceil(_SEARCH_BITS * math.log(2) / math.log(m + 1))  # interval shrinks (m+1)x a round
    draft_ids = torch.tensor(seqs, dtype=torch.long).reshape(s, k)
    nd = torch.full((s,), num_drafts, dtype=torch.long)
    tgt = target.expand(s, k + 1, v)
    dp = None if draft_probs is None else draft_probs.expand(s, k, v)
    # m copies of every row, to try m uniforms per row at once
    draft_m, nd_m = draft_ids.repeat_interleave(m, 0), nd.repeat_interleave(m, 0)
    tgt_m = target.expand(s * m, k + 1, v)
    dp_m = None if draft_probs is None else draft_probs.expand(s * m, k, v)

    with _Forced() as forced:

        def accepted_at(j: int, uj: torch.Tensor) -> torch.Tensor:
            """uj (s, m) uniforms for position j -> (s, m) accepted?"""
            u = torch.ones(s * m, k, dtype=F64)
            u[:, :j] = 0.0  # accept every earlier position that can be accepted at all
            u[:, j] = uj.reshape(-1)
            return (forced.run(fn, draft_m, nd_m, dp_m, tgt_m, u)[0] > j).reshape(s, m)

        accept_prob = torch.ones(s, k, dtype=F64)
        frac = torch.arange(1, m + 1, dtype=F64) / (m + 1)
        for j in range(num_drafts):
            ends = torch.zeros(s, m, dtype=F64)
            ends[:, 1] = _U_MAX  # column 0: u = 0, column 1: the largest u torch.rand returns
            acc_ends = accepted_at(j, ends)
            acc0, acc1 = acc_ends[:, 0], acc_ends[:, 1]
            lo, hi = torch.zeros(s, 1, dtype=F64), torch.ones(s, 1, dtype=F64)
            for _ in range(rounds):  # m-ary search for sup{u: accepted}
                grid = lo + (hi - lo) * frac
                acc = accepted_at(j, grid)
                n_acc = acc.sum(dim=1, keepdim=True)  # monotone: the first n_acc are accepted
                assert torch.equal(acc, torch.arange(m)[None, :] < n_acc), (
                    "acceptance is not a threshold in u"
                )
                grid_ext = torch.cat([lo, grid, hi], dim=1)
                lo, hi = grid_ext.gather(1, n_acc), grid_ext.gather(1, n_acc + 1)
            mid = ((lo + hi) / 2).squeeze(1)
            accept_prob[:, j] = torch.where(~acc0, 0.0, torch.where(acc1, 1.0, mid))

        outcomes: list[list[tuple[float, int, torch.Tensor]]] = [[] for _ in range(s)]
        for n in range(num_drafts + 1):
            u = torch.ones(s, k, dtype=F64)
            u[:, :n] = 0.0  # accept the first n, reject position n (u = 1 is never below p/q <= 1)
            n_out, dist = forced.run(fn, draft_ids, nd, dp, tgt, u)
            w = accept_prob[:, :n].prod(dim=1)
            if n < num_drafts:
                w = w * (1.0 - accept_prob[:, n])
            for row in range(s):
                if w[row] > 0:
                    assert n_out[row] == n, f"forced {n} accepted, got {int(n_out[row])}"
                    outcomes[row].append((float(w[row]), n, dist[row]))
    return outcomes


def _draft_sequences(proposal: torch.Tensor, num_drafts: int, k: int):
    """Every draft sequence of ``num_drafts`` tokens with its probability under ``proposal``
    (independent positions); positions >= num_drafts are padded with token 0."""
    v = proposal.shape[1]
    seqs, weights = [], []
    for xs in itertools.product(range(v), repeat=num_drafts):
        w = math.prod(float(proposal[j, x]) for j, x in enumerate(xs))
        if w > 0:
            seqs.append(tuple(xs) + (0,) * (k - num_drafts))
            weights.append(w)
    return seqs, weights


def _continue(prefix: tuple[int, ...], dist: torch.Tensor, rest: torch.Tensor | None, r: int, v: int):
    """Law of r tokens: ``prefix``, then y ~ dist, then (if r is not reached yet) ``rest``, the law
    of the tokens after that."""
    out = torch.zeros((v,) * r, dtype=F64)
    prefix = prefix[:r]
    if len(prefix) == r:
        out[prefix] = 1.0
    elif len(prefix) + 1 == r:
        out[prefix] = dist
    else:
        out[prefix] = torch.tensordot(dist, rest, dims=0)
    return out


def exact_law(
    fn: AcceptFn,
    p: torch.Tensor,
    q: torch.Tensor | None,
    k: int,
    *,
    num_drafts: Sequence[int] | None = None,
    fixed: Sequence[tuple[int, ...]] | None = None,
    length: int | None = None,
) -> torch.Tensor:
    """Exact law, shape (V,) * length, of the first ``length`` (default k + 1) tokens emitted by
    speculative decoding with ``fn`` when the target's next-token distribution at absolute
    position t is p[t] and the draft's is q[t] (a model that ignores its context): a call that
    starts at position t sees p[t : t+k+1] and drafts x_j ~ q[t+j]; the next call starts where it
    stopped. Per call, the draft count is uniform over ``num_drafts`` (default [k]).

    ``fixed``: deterministic proposals instead (draft_probs=None): one law per fixed sequence
    (every call proposes it), stacked into shape (S,) + (V,) * length.

    Lossless means: the law is the outer product p[0] x p[1] x ... x p[length-1].
    """
    length = k + 1 if length is None else length
    v = p.shape[1]
    assert p.shape[0] >= k + length and (fixed is not None or q.shape[0] >= k + length - 1)
    nds = [k] if num_drafts is None else list(num_drafts)
    groups = [None] if fixed is None else list(fixed)  # one law per fixed sequence
    laws: dict[int, list[torch.Tensor]] = {}  # t -> law of tokens t..length-1, per group
    for t in reversed(range(length)):
        r = length - t
        pp = p[t : t + k + 1]
        qq = None if fixed is not None else q[t : t + k]
        acc = [torch.zeros((v,) * r, dtype=F64) for _ in groups]
        for nd in nds:
            if fixed is None:
                seqs, weights = _draft_sequences(qq, nd, k)
                group_of = [0] * len(seqs)
            else:
                seqs, weights = [tuple(s) for s in fixed], [1.0] * len(fixed)
                group_of = list(range(len(fixed)))
            for seq, w, g, outs in zip(
                seqs, weights, group_of, _step_outcomes(fn, pp, qq, seqs, nd), strict=True
            ):
                for prob, n, dist in outs:
                    nxt = t + n + 1
                    rest = laws[nxt][g] if nxt < length else None
                    acc[g] += (w * prob / len(nds)) * _continue(seq[:n], dist, rest, r, v)
        laws[t] = acc
    return laws[0][0] if fixed is None else torch.stack(laws[0])


def iid_law(p: torch.Tensor, length: int) -> torch.Tensor:
    """p[0] x p[1] x ... x p[length-1]: the law of ``length`` tokens sampled from the target."""
    law = p[0]
    for t in range(1, length):
        law = torch.tensordot(law, p[t], dims=0)
    return law


# --------------------------------------------------------------------------------------------
# Hypothesis strategies for p/q.
# --------------------------------------------------------------------------------------------

_TINY = [0.0, 1e-12, 1e-15, 1e-300, 5e-324]
KINDS = ["random", "disjoint", "onehot_p", "onehot_q", "equal", "tiny"]


@st.composite
def _vector(draw, v: int, support: Sequence[int], style: str) -> torch.Tensor:
    """A float64 probability vector of length v that is 0 outside ``support``."""
    out = torch.zeros(v, dtype=F64)
    if style == "onehot":
        out[draw(st.sampled_from(list(support)))] = 1.0
        return out
    m = len(support)
    xs = draw(st.lists(st.floats(0, 1), min_size=m, max_size=m))
    if style == "tiny":  # near-zero (and exactly-zero) masses next to ordinary ones
        mask = draw(st.lists(st.booleans(), min_size=m, max_size=m))
        tiny = draw(st.lists(st.sampled_from(_TINY), min_size=m, max_size=m))
        xs = [t if use else x for x, t, use in zip(xs, tiny, mask, strict=True)]
    if sum(xs) == 0:
        xs[draw(st.integers(0, m - 1))] = 1.0
    vals = torch.tensor(xs, dtype=F64)
    out[list(support)] = vals / vals.sum()
    return out / out.sum()


@st.composite
def pq_cases(draw, k: int, v: int | None = None):
    """(p (2k+1, V), q (2k, V)) float64, position-dependent, of one of KINDS: enough positions
    for ``exact_law`` to follow the first k+1 emitted tokens."""
    v = draw(st.integers(2, 8)) if v is None else v
    kind = draw(st.sampled_from(KINDS))
    support_p = support_q = list(range(v))
    if kind == "disjoint":
        perm = draw(st.permutations(range(v)))
        cut = draw(st.integers(1, v - 1))
        support_p, support_q = perm[:cut], perm[cut:]
    style_p = {"onehot_p": "onehot", "tiny": "tiny"}.get(kind, "random")
    style_q = {"onehot_q": "onehot", "tiny": "tiny"}.get(kind, "random")
    p = torch.stack([draw(_vector(v, support_p, style_p)) for _ in range(2 * k + 1)])
    if kind == "equal":
        q = p[: 2 * k].clone()
    else:
        q = torch.stack([draw(_vector(v, support_q, style_q)) for _ in range(2 * k)] or [torch.zeros(0)])
        q = q.reshape(2 * k, v)
    return p, q


def _law_error(fn: AcceptFn, k: int, p: torch.Tensor, q: torch.Tensor, num_drafts=None) -> float:
    """Max abs difference between the exact law of the first k+1 emitted tokens and p[0] x .. x p[k]."""
    return float((exact_law(fn, p, q, k, num_drafts=num_drafts) - iid_law(p, k + 1)).abs().max())


def _fixed_law_error(fn: AcceptFn, k: int, p: torch.Tensor, num_drafts=None) -> float:
    """Same for deterministic proposals, maximised over EVERY fixed draft sequence."""
    seqs = list(itertools.product(range(p.shape[1]), repeat=k))
    law = exact_law(fn, p, None, k, num_drafts=num_drafts, fixed=seqs)
    return float((law - iid_law(p, k + 1)).abs().max())


EXACT_SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# 1. Exact laws of the real implementation.
# --------------------------------------------------------------------------------------------


@EXACT_SETTINGS
@given(pq_cases(k=1))
def test_exact_law_k1(case):
    """One draft: the first emitted token is exactly p[0], and the second (the bonus, or the
    next call's first token) exactly p[1], independent of the first."""
    p, q = case
    assert _law_error(speculative_accept, 1, p, q) < EXACT_TOL


# per-call draft counts for k = 2: mostly full chains, sometimes fewer drafts than k, or a mix
NUM_DRAFTS_K2 = st.sampled_from([[2], [2], [1], [0, 1, 2]])


@EXACT_SETTINGS
@given(pq_cases(k=2), NUM_DRAFTS_K2)
def test_exact_law_k2_chain(case, num_drafts):
    """Two chained drafts, position-dependent p and q (so a rule that reads the wrong position
    fails): the first three emitted tokens are exactly p[0] x p[1] x p[2] -- the second draft is
    accepted conditionally on the first, the bonus comes from p[num_drafts]."""
    p, q = case
    assert _law_error(speculative_accept, 2, p, q, num_drafts) < EXACT_TOL


@EXACT_SETTINGS
@given(pq_cases(k=1))
def test_exact_law_deterministic_k1(case):
    """draft_probs=None (prompt lookup, greedy drafts): for EVERY fixed draft x the output is
    exactly p -- including x with p(x) = 0 and p one-hot at x."""
    p, _ = case
    assert _fixed_law_error(speculative_accept, 1, p) < EXACT_TOL


@EXACT_SETTINGS
@given(pq_cases(k=2), NUM_DRAFTS_K2)
def test_exact_law_deterministic_k2(case, num_drafts):
    """Same for every fixed pair of deterministic drafts."""
    p, _ = case
    assert _fixed_law_error(speculative_accept, 2, p, num_drafts) < EXACT_TOL


# The planted case: position-dependent target p and (processed) draft q, V = 4. Every planted
# bug is at TV >= MIN_PLANTED_TV from the target in every configuration below (checked exactly).
P_PLANTED = torch.tensor(
    [[0.10, 0.20, 0.30, 0.40], [0.40, 0.30, 0.20, 0.10], [0.25, 0.25, 0.25, 0.25],
     [0.70, 0.10, 0.10, 0.10], [0.05, 0.15, 0.20, 0.60], [0.30, 0.30, 0.30, 0.10],
     [0.10, 0.50, 0.10, 0.30]], dtype=F64,
)  # fmt: skip
Q_PLANTED = torch.tensor(
    [[0.55, 0.30, 0.10, 0.05], [0.10, 0.20, 0.30, 0.40], [0.60, 0.20, 0.10, 0.10],
     [0.25, 0.25, 0.25, 0.25], [0.40, 0.30, 0.20, 0.10], [0.10, 0.10, 0.70, 0.10]], dtype=F64,
)  # fmt: skip


@pytest.mark.parametrize("num_drafts", [0, 1, 2, 3])
def test_exact_law_with_fewer_drafts_than_k(num_drafts):
    """Rows that use fewer than k = 3 drafts (num_drafts < k, including 0) are exact too; the
    bonus then comes from p[num_drafts], not p[k]."""
    p, q = P_PLANTED, Q_PLANTED
    law = exact_law(speculative_accept, p, q, 3, num_drafts=[num_drafts])
    assert torch.allclose(law, iid_law(p, 4), atol=EXACT_TOL, rtol=0)
    seqs = list(itertools.product(range(4), repeat=3))
    law = exact_law(speculative_accept, p, None, 3, num_drafts=[num_drafts], fixed=seqs)
    assert torch.allclose(law, iid_law(p, 4).expand_as(law), atol=EXACT_TOL, rtol=0)


# --------------------------------------------------------------------------------------------
# 2. Sampled frequencies of the real implementation (chi-square).
# --------------------------------------------------------------------------------------------


def sample_sequences(
    fn: AcceptFn,
    p: torch.Tensor,
    q: torch.Tensor | None,
    k: int,
    *,
    num_drafts: Sequence[int],
    length: int,
    rows: int,
    seed: int,
    fixed: Sequence[int] | None = None,
) -> np.ndarray:
    """Sample the problem of ``exact_law`` for real: ``rows`` independent generations, each run
    call after call (a call starting at position t gets p[t : t+k+1], drafts x_j ~ q[t+j] by
    torch.multinomial, or the ``fixed`` drafts with draft_probs=None; draft count uniform over
    ``num_drafts`` per row and call) until ``length`` tokens are out. Returns (rows, length)."""
    g = torch.Generator().manual_seed(seed)
    v = p.shape[1]
    out = torch.full((rows, length), -1, dtype=torch.long)
    pos = torch.zeros(rows, dtype=torch.long)
    choices = torch.tensor(list(num_drafts), dtype=torch.long)
    offs = torch.arange(k + 1)
    while True:
        live = torch.nonzero(pos < length).squeeze(1)
        if live.numel() == 0:
            return out.numpy()
        b, t = live.numel(), pos[live]
        nd = choices[torch.randint(len(choices), (b,), generator=g)]
        target = p[t[:, None] + offs]  # (b, k+1, V)
        if fixed is not None:
            draft, dp = torch.tensor(list(fixed), dtype=torch.long).expand(b, k), None
        else:
            dp = q[t[:, None] + offs[:k]]  # (b, k, V)
            draft = torch.multinomial(dp.reshape(b * k, v), 1, generator=g).reshape(b, k)
        n, nxt = fn(draft, nd, dp, target, generator=g)
        assert torch.all((n >= 0) & (n <= nd))
        emitted = torch.where(offs[None, :] < n[:, None], torch.cat([draft, nxt[:, None]], 1), nxt[:, None])
        where = t[:, None] + offs[None, :]
        keep = (offs[None, :] <= n[:, None]) & (where < length)
        out[live[:, None].expand_as(where)[keep], where[keep]] = emitted[keep]
        pos[live] = t + n + 1


# name -> (k, per-call num_drafts choices, deterministic?)
CONFIGS = {
    "k1": (1, [1], False),
    "k3_mixed_num_drafts": (3, [0, 1, 2, 3], False),
    "det_k1": (1, [1], True),
    "det_k3_mixed_num_drafts": (3, [0, 1, 2, 3], True),
}
FIXED_DRAFTS = (2, 0, 3)  # the deterministic proposal of the det_* configurations


def _config(name: str):
    k, nds, det = CONFIGS[name]
    return k, nds, det, P_PLANTED[: 2 * k + 1], (None if det else Q_PLANTED[: 2 * k])


def chi_square_for(fn: AcceptFn, config: str, seed: int = 1234) -> dict[str, float]:
    """Chi-square p-values of a configuration: "first" (the first emitted token against p[0])
    and "sequence" (the first k+1 emitted tokens, V**(k+1) cells, against p[0] x .. x p[k])."""
    k, nds, det, p, q = _config(config)
    v, length = p.shape[1], k + 1
    seqs = sample_sequences(
        fn, p, q, k, num_drafts=nds, length=length, rows=B, seed=seed, fixed=FIXED_DRAFTS[:k] if det else None
    )
    cells = np.ravel_multi_index(tuple(seqs.T), (v,) * length)
    return {
        "first": chi_square_pvalue(counts(seqs[:, 0], v), p[0].numpy()),
        "sequence": chi_square_pvalue(counts(cells, v**length), iid_law(p, length).numpy().ravel()),
    }


def exact_tv_for(fn: AcceptFn, config: str) -> float:
    """Total variation between fn's exact law of the first k+1 tokens and the target's."""
    k, nds, det, p, q = _config(config)
    fixed = [FIXED_DRAFTS[:k]] if det else None
    law = exact_law(fn, p, q, k, num_drafts=nds, fixed=fixed)
    return total_variation(law.numpy(), iid_law(p, k + 1).numpy())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_chi_square_real(config):
    """The real speculative_accept: exact law on the planted case is the target, and sampled
    frequencies pass both chi-square tests (false-positive rate ALPHA each)."""
    assert exact_tv_for(speculative_accept, config) < EXACT_TOL
    pvalues = chi_square_for(speculative_accept, config)
    assert min(pvalues.values()) > ALPHA, f"{config}: {pvalues}"


# --------------------------------------------------------------------------------------------
# 3. Planted bugs must be rejected by the same checks.
# --------------------------------------------------------------------------------------------

PLANTED = [(bug, cfg) for bug in BUGS for cfg in CONFIGS if not CONFIGS[cfg][2] or bug in DETERMINISTIC_BUGS]


@pytest.mark.parametrize(("bug", "config"), PLANTED)
def test_planted_bug_rejected_by_exact_law_and_chi_square(bug, config):
    """A planted bug's exact law is >= MIN_PLANTED_TV from the target (a fair, detectable
    bias), and the chi-square test of ``test_chi_square_real`` (same seed, same sample size)
    rejects it at ALPHA."""
    tv = exact_tv_for(BUGS[bug], config)
    assert tv >= MIN_PLANTED_TV, f"{bug}/{config}: planted bias too small to be a fair test (TV {tv:.4f})"
    pvalues = chi_square_for(BUGS[bug], config)
    assert min(pvalues.values()) < ALPHA, (
        f"{bug}/{config}: chi-square failed to reject ({pvalues}, TV {tv:.4f})"
    )


# No shrinking: the first counterexample is enough to show that the property rejects the bug.
_FIND_SETTINGS = settings(
    deadline=None, max_examples=500, database=None, derandomize=True, phases=[Phase.generate]
)


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_falsified_by_exact_property(bug):
    """The hypothesis properties of test_exact_law_k1 / _k2_chain find a counterexample."""
    for k in (1, 2):
        found = find(
            pq_cases(k=k), lambda case, k=k: _law_error(BUGS[bug], k, *case) > 1e-6, settings=_FIND_SETTINGS
        )
        assert _law_error(BUGS[bug], k, *found) > 1e-6


@pytest.mark.parametrize("bug", DETERMINISTIC_BUGS)
def test_planted_bug_falsified_by_deterministic_property(bug):
    """The deterministic-draft properties find a counterexample for the bugs that affect them."""
    for k in (1, 2):
        found = find(
            pq_cases(k=k),
            lambda case, k=k: _fixed_law_error(BUGS[bug], k, case[0]) > 1e-6,
            settings=_FIND_SETTINGS,
        )
        assert _fixed_law_error(BUGS[bug], k, found[0]) > 1e-6


def test_harness_skeleton_is_exact_with_correct_pieces():
    """Sanity check of the harness: the bugs' shared skeleton with the correct pieces is exact,
    so their failures come from the planted change alone."""

    def correct(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
        return _skeleton(
            draft_ids, num_drafts, draft_probs, target_probs, generator=generator,
            accept_threshold=lambda p, q: p / q, reject_dist=residual_distribution,
        )  # fmt: skip

    for config in CONFIGS:
        assert exact_tv_for(correct, config) < EXACT_TOL
    assert min(chi_square_for(correct, "k3_mixed_num_drafts").values()) > ALPHA


# --------------------------------------------------------------------------------------------
# 4. Well-formed outputs on arbitrary inputs; greedy tables; k = 0.
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_outputs_always_well_formed(data):
    """For any p/q (disjoint supports, one-hot, near-zero and zero mass, float32 or float64), any
    num_drafts in [0, k] and any draft ids (sampled from q or arbitrary, even with q(x) = 0):
    0 <= num_accepted <= num_drafts, accepted drafts and next_token have target mass > 0."""
    k = data.draw(st.integers(0, 4), label="k")
    v = data.draw(st.integers(2, 8), label="V")
    rows = data.draw(st.integers(1, 4), label="rows")
    dtype = data.draw(st.sampled_from([F64, torch.float32]), label="dtype")
    cases = [data.draw(pq_cases(k=k, v=v)) for _ in range(rows)]
    p = torch.stack([c[0][: k + 1] for c in cases])
    q = torch.stack([c[1][:k] for c in cases])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    if k > 0 and data.draw(st.booleans(), label="drafts_from_q"):
        draft = torch.stack([torch.multinomial(q[r], 1, generator=g).squeeze(1) for r in range(rows)])
    else:
        draft = torch.tensor(
            data.draw(
                st.lists(
                    st.lists(st.integers(0, v - 1), min_size=k, max_size=k), min_size=rows, max_size=rows
                )
            ),
            dtype=torch.long,
        ).reshape(rows, k)
    nd = torch.tensor(data.draw(st.lists(st.integers(0, k), min_size=rows, max_size=rows)), dtype=torch.long)
    reps = 64  # every row many times, to exercise the random branches
    p, q = p.to(dtype).repeat(reps, 1, 1), q.to(dtype).repeat(reps, 1, 1)
    draft, nd = draft.repeat(reps, 1), nd.repeat(reps)
    idx = torch.arange(rows * reps)
    for dp in (q, None):
        n, nxt = speculative_accept(draft, nd, dp, p, generator=g)
        assert n.dtype == torch.long and nxt.dtype == torch.long
        assert torch.all((n >= 0) & (n <= nd))
        assert torch.all(p[idx, n, nxt] > 0), "next_token has target mass 0"
        p_draft = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)
        accepted = torch.arange(k)[None, :] < n[:, None]
        assert torch.all(p_draft[accepted] > 0), "accepted a draft of target mass 0"
    scores = p.log()  # processed scores; masked tokens at -inf
    n, nxt = greedy_accept(draft, nd, scores)
    argmax = scores.argmax(-1)
    assert torch.all((n >= 0) & (n <= nd))
    assert torch.equal(nxt, argmax[idx, n])
    for r in range(rows):
        expected = 0
        while expected < int(nd[r]) and int(draft[r, expected]) == int(argmax[r, expected]):
            expected += 1
        assert int(n[r]) == expected


def _scores_from_argmax(table: list[list[int]], v: int) -> torch.Tensor:
    """Processed scores (B, k+1, V) whose argmax is ``table``; masked tokens at -inf, like a
    top-k / grammar processor leaves them."""
    t = torch.tensor(table, dtype=torch.long)
    scores = torch.randn(*t.shape, v, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    scores[..., (torch.arange(v) % 3) == 2] = float("-inf")
    scores.scatter_(-1, t[..., None], 10.0)
    return scores


GREEDY_CASES = [
    # (draft ids, num_drafts, target argmax per position (k+1), expected (num_accepted, next_token))
    ([1, 2, 3], 3, [1, 2, 3, 4], (3, 4)),  # all accepted: bonus token from the last position
    ([1, 5, 3], 3, [1, 2, 3, 4], (1, 2)),  # mismatch in the middle: correction at position 1
    ([0, 2, 3], 3, [1, 2, 3, 4], (0, 1)),  # first draft wrong; later matches do not count
    ([1, 2, 0], 3, [1, 2, 3, 4], (2, 3)),  # last draft wrong
    ([1, 2, 3], 2, [1, 2, 3, 4], (2, 3)),  # fewer drafts than k: bonus at position num_drafts
    ([1, 2, 3], 1, [1, 0, 3, 4], (1, 0)),
    ([1, 2, 3], 0, [1, 2, 3, 4], (0, 1)),  # no drafts: plain greedy step
    ([5, 5, 5], 3, [5, 5, 5, 5], (3, 5)),  # repeated tokens
    ([4, 0, 0], 3, [5, 0, 0, 0], (0, 5)),
]


def test_greedy_hand_built_table():
    """Greedy acceptance on hand-built argmax tables (expected values worked out by hand)."""
    drafts = torch.tensor([c[0] for c in GREEDY_CASES])
    nd = torch.tensor([c[1] for c in GREEDY_CASES])
    scores = _scores_from_argmax([c[2] for c in GREEDY_CASES], v=6)
    assert torch.equal(scores.argmax(-1), torch.tensor([c[2] for c in GREEDY_CASES]))
    n, nxt = greedy_accept(drafts, nd, scores)
    assert n.tolist() == [c[3][0] for c in GREEDY_CASES]
    assert nxt.tolist() == [c[3][1] for c in GREEDY_CASES]


def test_k0_no_drafts():
    """k = 0 (draft_ids of shape (B, 0)): every rule degenerates to a plain step from p[0]."""
    bsz, v = 5, 6
    scores = _scores_from_argmax([[1], [2], [3], [4], [0]], v)
    probs = scores.softmax(-1).to(F64)
    draft = torch.zeros(bsz, 0, dtype=torch.long)
    nd = torch.zeros(bsz, dtype=torch.long)
    n, nxt = greedy_accept(draft, nd, scores)
    assert n.tolist() == [0] * bsz and nxt.tolist() == [1, 2, 3, 4, 0]
    g = torch.Generator().manual_seed(0)
    for dp in (torch.zeros(bsz, 0, v, dtype=F64), None):
        n, nxt = speculative_accept(draft, nd, dp, probs, generator=g)
        assert n.tolist() == [0] * bsz
        assert torch.all(probs[torch.arange(bsz), 0, nxt] > 0)


def test_k0_chi_square():
    """k = 0 samples p[0] (chi-square at ALPHA)."""
    p = P_PLANTED[:1].expand(B, 1, 4)
    g = torch.Generator().manual_seed(7)
    _, nxt = speculative_accept(
        torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, dtype=torch.long), None, p, generator=g
    )
    assert chi_square_pvalue(counts(nxt.numpy(), 4), P_PLANTED[0].numpy()) > ALPHA


def test_generator_makes_it_reproducible():
    """Same generator seed, same outputs (the chi-square tests rely on it to be deterministic)."""
    kw = dict(num_drafts=[0, 1, 2, 3], length=4, rows=2000, seed=5)
    a = sample_sequences(speculative_accept, P_PLANTED, Q_PLANTED, 3, **kw)
    b = sample_sequences(speculative_accept, P_PLANTED, Q_PLANTED, 3, **kw)
    assert np.array_equal(a, b) and a.min() >= 0
