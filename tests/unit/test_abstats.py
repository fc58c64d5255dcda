"""A/B statistics against scipy on fixed data; the sequential test under repeated peeking."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from shipyard.ab import statistics as abstats
from shipyard.ab.statistics import Moments


def test_moments_merge_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, 1000)
    m = Moments()
    for chunk in np.array_split(x, 7):
        part = Moments()
        part.add(chunk)
        m.merge(part)
    assert (
        m.n == 1000 and m.mean == pytest.approx(x.mean()) and m.var == pytest.approx(x.var(ddof=1))
    )


def test_two_proportion_z_test_equals_scipy_chi_square() -> None:
    z, p = abstats.two_proportion_ztest(120, 1000, 150, 1000)
    chi2, p_ref, _, _ = stats.chi2_contingency([[120, 880], [150, 850]], correction=False)
    assert z * z == pytest.approx(chi2) and p == pytest.approx(p_ref)


def test_welch_equals_scipy_on_raw_data() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 3, 400), rng.normal(10.5, 5, 300)
    ma, mb = Moments(), Moments()
    ma.add(a)
    mb.add(b)
    t, p = abstats.welch_test(ma, mb)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)


def test_intervals() -> None:
    lo, hi = abstats.wilson_interval(30, 100)
    ref = stats.binomtest(30, 100).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    m = Moments()
    data = np.arange(20.0)
    m.add(data)
    ref_t = stats.t.interval(0.95, 19, loc=data.mean(), scale=stats.sem(data))
    assert abstats.t_interval(m) == pytest.approx(ref_t)


def test_srm_equals_scipy_chisquare() -> None:
    out = abstats.srm_test({"a": 5200, "b": 4800}, {"a": 0.5, "b": 0.5})
    ref = stats.chisquare([5200, 4800], [5000, 5000])
    assert out["p_value"] == pytest.approx(ref.pvalue) and out["chi2"] == pytest.approx(
        ref.statistic
    )


def _peeking_false_positives(
    sims: int, looks: int, per_look: int, alpha: float
) -> tuple[float, float]:
    """A/A experiments (no true difference) checked after every batch: share ever 'significant'."""
    rng = np.random.default_rng(7)
    p_true, tau = 0.2, 0.1 * np.sqrt(0.2 * 0.8)
    seq_hits = naive_hits = 0
    for _ in range(sims):
        a = np.cumsum(rng.random((looks, per_look)) < p_true, axis=None).reshape(looks, per_look)[
            :, -1
        ]
        b = np.cumsum(rng.random((looks, per_look)) < p_true, axis=None).reshape(looks, per_look)[
            :, -1
        ]
        running = 1.0
        naive = False
        for k in range(looks):
            n = (k + 1) * per_look
            ma = Moments(n, a[k] / n, 0.0)
            mb = Moments(n, b[k] / n, 0.0)
            var = abstats.diff_variance(ma, mb, conversion=True)
            running = min(running, abstats.msprt_p(mb.mean - ma.mean, var, tau))
            naive |= abstats.two_proportion_ztest(a[k], n, b[k], n)[1] < alpha
        seq_hits += running < alpha
        naive_hits += naive
    return seq_hits / sims, naive_hits / sims


def test_sequential_p_value_survives_peeking_where_the_fixed_test_does_not() -> None:
    alpha = 0.05
    seq_fpr, naive_fpr = _peeking_false_positives(sims=600, looks=50, per_look=100, alpha=alpha)
    assert seq_fpr <= alpha, seq_fpr
    assert naive_fpr > 2 * alpha, naive_fpr  # peeking at a fixed-horizon test inflates it


def test_sequential_p_value_detects_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(20000) < 0.20, rng.random(20000) < 0.23
    ma, mb = Moments(20000, a.mean(), 0.0), Moments(20000, b.mean(), 0.0)
    p = abstats.msprt_p(mb.mean - ma.mean, abstats.diff_variance(ma, mb, True), 0.04)
    assert p < 0.01


@pytest.mark.parametrize(
    ("kwargs", "decision"),
    [
        ({"guardrail_tripped": "error rate"}, "roll back"),
        ({"srm_flagged": True}, "investigate"),
        ({"n_control": 10}, "keep running"),
        ({"sequential_p": 0.01, "diff": 0.02}, "promote"),
        ({"sequential_p": 0.01, "diff": -0.02}, "roll back"),
        ({"sequential_p": 0.01, "diff": -0.02, "higher_is_better": False}, "promote"),
        ({"sequential_p": 0.2, "diff": 0.02}, "keep running"),
    ],
)
def test_recommendation(kwargs: dict[str, Any], decision: str) -> None:
    base = dict(guardrail_tripped=None, srm_flagged=False, n_control=500, n_treatment=500,
                min_outcomes=100, sequential_p=None, diff=None, alpha=0.05)  # fmt: skip
    assert abstats.recommend(**{**base, **kwargs})[0] == decision


def test_push_equals_add() -> None:
    x = np.random.default_rng(5).normal(2, 3, 500)
    a, b = Moments(), Moments()
    a.add(x)
    for v in x:
        b.push(float(v))
    assert (b.n, b.mean, b.var) == pytest.approx((a.n, a.mean, a.var))
