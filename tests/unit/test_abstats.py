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


def test_keyed_interval_is_the_normal_interval_for_single_request_units() -> None:
    data = np.arange(20.0)
    k = abstats.KeyedOutcomes()
    for v in data:
        k.push(None, float(v))
    ref = stats.norm.interval(0.95, loc=data.mean(), scale=stats.sem(data))
    assert k.interval() == pytest.approx(ref)


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


def test_keyed_outcomes_stream_exactly_and_reduce_to_the_request_variance_for_single_requests() -> (
    None
):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 300, 5000)
    y = (rng.random(5000) < 0.3).astype(float)
    streamed = abstats.KeyedOutcomes()
    for k, v in zip(keys, y, strict=True):
        streamed.push(f"k{k}", float(v))
    batch = abstats.KeyedOutcomes.from_units(np.bincount(keys, y), np.bincount(keys))
    for field in ("units", "sum_y", "sum_n", "sum_yy", "sum_nn", "sum_yn"):
        assert getattr(streamed, field) == pytest.approx(getattr(batch, field))
    assert streamed.mean == pytest.approx(y.mean())
    again = abstats.KeyedOutcomes.from_json(streamed.to_json())
    assert again.var_of_mean == pytest.approx(streamed.var_of_mean)
    # One request per unit (no key): the delta method is the ordinary variance of a mean.
    single = abstats.KeyedOutcomes()
    for v in y[:1000]:
        single.push(None, float(v))
    assert single.units == 1000
    assert single.var_of_mean == pytest.approx(y[:1000].var(ddof=1) / 1000)


def test_keyed_variance_matches_a_bootstrap_over_keys() -> None:
    rng = np.random.default_rng(4)
    n = rng.integers(1, 51, 400)
    q = rng.beta(0.5, 2.0, 400)
    ys = rng.binomial(n, q).astype(float)
    est = abstats.KeyedOutcomes.from_units(ys, n)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, 400, 400)
        boot.append(ys[i].sum() / n[i].sum())
    assert np.sqrt(est.var_of_mean) == pytest.approx(np.std(boot), rel=0.1)
    # Far wider than if the requests were independent: that is the false positives' source.
    assert est.var_of_mean > 5 * est.mean * (1 - est.mean) / n.sum()


def test_aa_with_repeated_keys_stays_within_alpha_per_key_and_not_per_request() -> None:
    from tests import simulations as sim

    result = sim.aa_repeated_keys(reps=100)
    assert result["per_key_sequential"] <= 0.05, result
    assert result["per_key_fixed"] <= 0.08, result  # alpha plus simulation error (100 runs)
    assert result["per_request_sequential"] >= 0.2, result  # what the key-level analysis fixes
    assert result["per_request_fixed"] >= 0.3, result
