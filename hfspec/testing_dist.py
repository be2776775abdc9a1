"""Small pure helpers for distribution tests (chi-square with pooling, total variation).

Kept in the package (no test-only imports besides numpy/scipy, loaded lazily) so every
distribution test in the project states its false-positive rate the same way: a test rejects
when ``chi_square_pvalue(...) < alpha``; with a correct sampler the p-value is uniform on
[0, 1], so the test fails with probability ``alpha`` over the choice of seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def total_variation(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """TV distance 0.5 * sum |a - b| between two distributions over the same cells."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    assert a.shape == b.shape, (a.shape, b.shape)
    return 0.5 * float(np.abs(a - b).sum())


def counts(tokens: Sequence[int] | np.ndarray, num_cells: int) -> np.ndarray:
    """Histogram of integer outcomes in ``range(num_cells)`` (raises on anything outside)."""
    t = np.asarray(tokens, dtype=np.int64).ravel()
    assert t.size == 0 or (t.min() >= 0 and t.max() < num_cells), "outcome outside range(num_cells)"
    return np.bincount(t, minlength=num_cells)


def chi_square_pvalue(
    observed: Sequence[int] | np.ndarray,
    expected_probs: Sequence[float] | np.ndarray,
    *,
    min_expected: float = 5.0,
) -> float:
    """Pearson chi-square goodness-of-fit p-value of ``observed`` counts against ``expected_probs``.

    * An observation in a cell of expected probability 0 is impossible under the null: returns 0.0.
    * Cells whose expected count is below ``min_expected`` are pooled into one cell (and that
      cell into the smallest remaining one if it is still too small), so the chi-square
      approximation holds.
    * Fewer than two cells left: nothing to test, returns 1.0.
    """
    from scipy.stats import chisquare

    obs = np.asarray(observed, dtype=np.float64).ravel()
    probs = np.asarray(expected_probs, dtype=np.float64).ravel()
    assert obs.shape == probs.shape, (obs.shape, probs.shape)
    assert np.all(probs >= 0) and probs.sum() > 0
    n = obs.sum()
    if n == 0:
        return 1.0
    if np.any(obs[probs == 0] > 0):
        return 0.0
    keep = probs > 0
    obs, exp = obs[keep], probs[keep] / probs[keep].sum() * n
    small = exp < min_expected
    if small.any():
        pooled_obs, pooled_exp = obs[small].sum(), exp[small].sum()
        obs, exp = obs[~small], exp[~small]
        if pooled_exp >= min_expected or obs.size == 0:
            obs, exp = np.append(obs, pooled_obs), np.append(exp, pooled_exp)
        else:
            j = int(np.argmin(exp))
            obs[j] += pooled_obs
            exp[j] += pooled_exp
    if obs.size < 2:
        return 1.0
    exp = exp * (obs.sum() / exp.sum())  # scipy insists the totals agree to ~1e-8
    return float(chisquare(obs, exp).pvalue)


def cells_pvalue(counts: dict, law: dict, **kwargs) -> float:
    """``chi_square_pvalue`` over outcomes given as dicts (outcome -> count, outcome -> probability);
    an observed outcome the law does not list has probability 0."""
    cells = sorted(set(law) | set(counts))
    return chi_square_pvalue([counts.get(c, 0) for c in cells], [law.get(c, 0.0) for c in cells], **kwargs)


def sequence_counts(rows: Sequence[Sequence[int]], stop: int, counts: dict | None = None) -> dict:
    """Counts of generated token sequences, each cut just after its first ``stop`` token (kept whole
    if it has none); adds to ``counts`` when given."""
    counts = {} if counts is None else counts
    for row in rows:
        row = list(row)
        cell = tuple(row[: row.index(stop) + 1]) if stop in row else tuple(row)
        counts[cell] = counts.get(cell, 0) + 1
    return counts
