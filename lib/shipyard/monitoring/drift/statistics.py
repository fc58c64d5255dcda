"""Drift's statistics on binned counts: proportions, PSI, Jensen-Shannon distance, pooling of
sparse bins and the chi-square test of homogeneity, and the one-sided test of a rate's rise."""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

EPS = 1e-4  # floor on bin proportions in PSI (an empty bin would make it infinite)
MIN_EXPECTED = 5.0  # chi-square: bins expecting fewer window rows are pooled


def proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """Population stability index, sum((q - p) * ln(q / p)), on proportions floored at `eps`."""
    p = np.maximum(proportions(np.asarray(reference, dtype=np.float64)), eps)
    q = np.maximum(proportions(np.asarray(current, dtype=np.float64)), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two binned distributions."""
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    # KL terms with 0 * log(0) = 0, base 2 (scipy.spatial.distance.jensenshannon, unrolled)
    kl_p = np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0]))
    kl_q = np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    return float(np.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def pool_sparse_bins(
    reference: np.ndarray, current: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the bins in which the window expects fewer than `min_expected` rows (under the
    reference proportions) into one, so the chi-square approximation holds. Bins empty on both
    sides are dropped. Returns the pooled (reference, current) counts."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return ref, cur
    # Expected window count of each bin under homogeneity (pooled proportions).
    expected = (ref + cur) * n_cur / (n_ref + n_cur)
    small = expected < min_expected
    if not small.any():
        return ref, cur
    ref_out, cur_out, exp_out = ref[~small], cur[~small], expected[~small]
    pooled = np.array([ref[small].sum(), cur[small].sum(), expected[small].sum()])
    if pooled[2] < min_expected and len(ref_out):  # still too small: join the smallest big bin
        j = int(np.argmin(exp_out))
        ref_out, cur_out = ref_out.copy(), cur_out.copy()
        ref_out[j] += pooled[0]
        cur_out[j] += pooled[1]
        return ref_out, cur_out
    return np.append(ref_out, pooled[0]), np.append(cur_out, pooled[1])


def chi2_homogeneity(
    reference: np.ndarray, current: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[float, int, float]:
    """Chi-square test that the window and the reference come from one distribution (a 2 x k
    contingency table of counts, sparse bins pooled). Returns (statistic, dof, p-value)."""
    ref, cur = pool_sparse_bins(reference, current, min_expected)
    if len(ref) < 2 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 0, 1.0
    # Pearson's statistic of the 2 x k table, computed directly: scipy's chi2_contingency gives
    # the same numbers (the unit tests check it) at several times the cost per call, and a drift
    # actor judges every feature of every window.
    table = np.vstack([ref, cur]).astype(np.float64)
    keep = table.sum(axis=0) > 0
    table = table[:, keep]
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return stat, dof, float(special.chdtrc(dof, stat))


def proportion_increase_p(x_ref: int, n_ref: int, x_cur: int, n_cur: int) -> float:
    """One-sided p-value that the window's rate x_cur/n_cur is above the reference's (pooled
    two-proportion z-test)."""
    if n_ref == 0 or n_cur == 0:
        return 1.0
    p_pool = (x_ref + x_cur) / (n_ref + n_cur)
    se = math.sqrt(p_pool * (1 - p_pool) * (1 / n_ref + 1 / n_cur))
    if se == 0:
        return 1.0 if x_cur / n_cur <= x_ref / n_ref else 0.0
    z = (x_cur / n_cur - x_ref / n_ref) / se
    return float(stats.norm.sf(z))
