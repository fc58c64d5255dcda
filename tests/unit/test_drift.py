"""Drift statistics against scipy and hand computation on fixed data; exact merges; windows,
episodes and restart from saved state."""

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from shipyard.config.drift import DriftSettings
from shipyard.demo import datagen
from shipyard.monitoring.drift import (
    PREDICTION,
    DriftMonitor,
    Reference,
    WindowCounts,
    chi2_homogeneity,
    js_distance,
    pool_sparse_bins,
    proportion_increase_p,
    psi,
)
from shipyard.multiplicity import benjamini_hochberg, holm

NUMERIC = [c for c in datagen.NUMERIC]
CATEGORICAL = list(datagen.CATEGORICAL)


def feed_of(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Columns the way a model replica holds them (numeric float32, categories as strings)."""
    out: dict[str, np.ndarray] = {}
    for c in NUMERIC:
        out[c] = df[c].to_numpy(np.float32).reshape(-1, 1)
    for c in CATEGORICAL:
        out[c] = df[c].astype("string").fillna("").to_numpy(object).reshape(-1, 1)
    return out


@pytest.fixture(scope="module")
def reference() -> Reference:
    df = datagen.generate(20000, seed=1)
    return Reference.from_frame(df, NUMERIC, CATEGORICAL)


# --- statistics ------------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    # (0.6 - 0.5) ln(0.6 / 0.5) + (0.4 - 0.5) ln(0.4 / 0.5)
    assert psi(np.array([50, 50]), np.array([60, 40])) == pytest.approx(
        0.1 * math.log(1.2) + 0.1 * math.log(1.25)
    )
    assert psi(np.array([10, 20, 30]), np.array([1, 2, 3])) == pytest.approx(0.0)
    # An empty bin is floored, not infinite.
    assert math.isfinite(psi(np.array([100, 0]), np.array([50, 50])))


def test_js_distance_matches_scipy_on_proportions() -> None:
    ref, cur = np.array([120, 300, 80, 0]), np.array([100, 250, 140, 10])
    expected = jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2)
    assert js_distance(ref, cur) == pytest.approx(expected)
    assert js_distance(ref, ref * 3) == pytest.approx(0.0, abs=1e-7)
    assert 0 < js_distance(ref, cur) <= 1


def test_chi2_matches_scipy_when_no_bin_is_sparse() -> None:
    ref, cur = np.array([500, 300, 200]), np.array([60, 20, 20])
    res = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert chi2_homogeneity(ref, cur) == pytest.approx((res.statistic, res.dof, res.pvalue))


def test_sparse_bins_are_pooled_before_the_test() -> None:
    ref = np.array([4000, 3000, 2000, 30, 20, 0])
    cur = np.array([40, 30, 20, 1, 0, 0])
    pooled_ref, pooled_cur = pool_sparse_bins(ref, cur)
    # The two bins expecting < 5 window rows become one; the bin empty on both sides goes; the
    # pooled bin is still too small, so it joins the smallest big bin.
    assert pooled_ref.tolist() == [4000, 3000, 2050] and pooled_cur.tolist() == [40, 30, 21]
    res = stats.chi2_contingency(np.vstack([pooled_ref, pooled_cur]), correction=False)
    assert chi2_homogeneity(ref, cur)[2] == pytest.approx(res.pvalue)


def test_one_sided_proportion_test_agrees_with_a_2x2_chi_square() -> None:
    # Same z statistic as the uncorrected 2x2 chi-square (z^2 = chi2); one-sided = half of it.
    x_ref, n_ref, x_cur, n_cur = 500, 10000, 80, 1000
    table = [[x_ref, n_ref - x_ref], [x_cur, n_cur - x_cur]]
    two_sided = stats.chi2_contingency(table, correction=False).pvalue
    assert proportion_increase_p(x_ref, n_ref, x_cur, n_cur) == pytest.approx(two_sided / 2)
    assert proportion_increase_p(x_cur, n_cur, x_ref, n_ref) == pytest.approx(1 - two_sided / 2)


def test_multiple_testing_corrections_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, max(0.04*1, 0.06)
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p))
    assert holm([]) == [] and benjamini_hochberg([]) == []


# --- counts ----------------------------------------------------------------------------------


def test_counts_merge_exactly(reference: Reference) -> None:
    df = pd.concat(
        [
            datagen.generate(3000, seed=5),
            datagen.generate(2000, seed=6, scenario="unseen_categories"),
        ]
    )
    whole, a, b = (WindowCounts.empty(reference, 0.0) for _ in range(3))
    m = DriftMonitor(reference)
    whole.add(m.binner, feed_of(df))
    a.add(m.binner, feed_of(df.iloc[:1234]))
    b.add(m.binner, feed_of(df.iloc[1234:]))
    a.merge(b)
    assert a.to_dict() == whole.to_dict()
    # Unseen countries land in the unseen bucket; missing incomes are counted, not binned.
    country = whole.features["country"]
    assert country.counts[-1] > 0 and country.counts.sum() + country.missing == len(df)
    income = whole.features["income"]
    assert income.missing == int(df["income"].isna().sum())
    assert income.counts.sum() == len(df) - income.missing


def test_bins_match_the_training_profile(reference: Reference) -> None:
    """The live binning reproduces the reference counts on the reference data itself."""
    df = datagen.generate(20000, seed=1)
    w = WindowCounts.empty(reference, 0.0)
    w.add(DriftMonitor(reference).binner, feed_of(df))
    for c in CATEGORICAL:
        assert w.features[c].counts.tolist() == reference.features[c].counts.tolist()
    for c in NUMERIC:  # float32 on the wire: a value on an edge may move one bin, no more
        diff = np.abs(w.features[c].counts - reference.features[c].counts).sum()
        assert diff <= 0.001 * len(df), c


# --- windows and verdicts --------------------------------------------------------------------


def stream(monitor: DriftMonitor, df: pd.DataFrame, batch: int = 500) -> list[dict[str, Any]]:
    events = []
    for i in range(0, len(df), batch):
        events += monitor.add(feed_of(df.iloc[i : i + batch]), now=1000.0 + i)
    return events


def test_no_drift_stream_raises_nothing(reference: Reference) -> None:
    m = DriftMonitor(reference, DriftSettings(window_rows=5000))
    assert stream(m, datagen.generate(40000, seed=11)) == []
    assert m.windows == 8 and not m.status()["drifted"]


@pytest.mark.parametrize(
    "scenario", ["covariate_shift", "category_mix", "missing_spike", "unseen_categories"]
)
def test_each_scenario_drifts_exactly_the_features_it_touched(
    reference: Reference, scenario: str
) -> None:
    m = DriftMonitor(reference, DriftSettings(window_rows=5000))
    events = stream(m, datagen.generate(5000, seed=12, scenario=scenario))
    touched = sorted(datagen.SCENARIOS[scenario].touched)
    assert [e["kind"] for e in events] == ["drift_started"]
    assert events[0]["features"] == touched
    assert m.last is not None and m.last["drifted_features"] == touched


def test_large_samples_do_not_alarm_on_trivial_shifts() -> None:
    rng = np.random.default_rng(0)
    ref_df = pd.DataFrame({"x": rng.normal(size=200000)})
    ref = Reference.from_frame(ref_df, ["x"], [])
    m = DriftMonitor(ref, DriftSettings(window_rows=400000))
    m.add({"x": rng.normal(0.03, 1, 400000)}, now=0.0)  # 0.03 sd: significant, not material
    r = m.last["features"]["x"]  # type: ignore[index]
    assert r["significant"] and not r["effect_exceeded"] and not r["drifted"]
    m.add({"x": rng.normal(0.25, 1, 400000)}, now=1.0)
    assert m.last["features"]["x"]["drifted"]  # type: ignore[index]


def test_time_windows_need_enough_rows(reference: Reference) -> None:
    m = DriftMonitor(reference, DriftSettings(window_rows=10**6, window_seconds=60, min_rows=500))
    df = datagen.generate(800, seed=3)
    m.add(feed_of(df.iloc[:300]), now=0.0)
    assert m.tick(now=120.0) == [] and m.windows == 0  # old enough, too few rows: keeps going
    m.add(feed_of(df.iloc[300:]), now=121.0)
    m.tick(now=122.0)
    assert m.windows == 1 and m.last is not None and m.last["rows"] == 800


def test_episode_starts_once_and_resolves_after_clean_windows(reference: Reference) -> None:
    m = DriftMonitor(reference, DriftSettings(window_rows=5000, resolve_after=2))
    kinds = []
    for i, scenario in enumerate(["none", "category_mix", "category_mix", "none", "none", "none"]):
        events = stream(m, datagen.generate(5000, seed=20 + i, scenario=scenario))
        kinds.append([(e["kind"], tuple(e["features"])) for e in events])
        if i == 2:
            assert m.status()["features"]["device"]["since"] is not None
    assert kinds == [
        [],
        [("drift_started", ("device",))],
        [],
        [],
        [("drift_resolved", ("device",))],
        [],
    ]


def test_quality_signals(reference: Reference) -> None:
    m = DriftMonitor(reference, DriftSettings(window_rows=2000))
    df = datagen.generate(2000, seed=4)
    feed = feed_of(df)
    feed["age"] = np.where(np.arange(2000) < 100, 500.0, feed["age"].ravel()).reshape(-1, 1)
    m.add(feed, type_errors={"tenure_months": 60}, now=0.0)
    feats = m.last["features"]  # type: ignore[index]
    assert feats["age"]["quality_flags"] == ["out_of_range"]
    assert feats["age"]["quality"]["out_of_range_rate"] == pytest.approx(0.05, abs=0.001)
    assert feats["tenure_months"]["quality_flags"] == ["type_errors"]
    assert sorted(m.last["drifted_features"]) == ["age", "tenure_months"]  # type: ignore[index]


def test_prediction_drift_is_judged_apart_from_the_feature_family() -> None:
    rng = np.random.default_rng(1)
    ref = Reference.from_frame(
        pd.DataFrame({"x": rng.normal(size=50000)}), ["x"], [], scores=rng.beta(2, 5, 50000)
    )
    m = DriftMonitor(ref, DriftSettings(window_rows=5000))
    events = m.add({"x": rng.normal(size=5000)}, scores=rng.beta(5, 2, 5000), now=0.0)
    assert m.last["prediction_drifted"] and m.last["drifted_features"] == []  # type: ignore[index]
    assert events[0]["features"] == [PREDICTION]


def test_restart_resumes_from_saved_state(reference: Reference) -> None:
    """A monitor rebuilt from its JSON state mid-window ends exactly where an uninterrupted one
    does: same windows, verdicts and episodes."""
    df = pd.concat(
        [datagen.generate(7000, seed=8), datagen.generate(6000, seed=9, scenario="category_mix")]
    )
    straight = DriftMonitor(reference, DriftSettings(window_rows=5000))
    stream(straight, df)
    first = DriftMonitor(reference, DriftSettings(window_rows=5000))
    stream(first, df.iloc[:6500])
    saved = json.loads(json.dumps(first.state()))  # through JSON, as the actor stores it
    resumed = DriftMonitor(reference, DriftSettings(window_rows=5000))
    resumed.restore(saved)
    events = []
    for i in range(6500, len(df), 500):
        events += resumed.add(feed_of(df.iloc[i : i + 500]), now=1000.0 + i)
    assert resumed.windows == straight.windows == 2
    assert resumed.last == straight.last
    assert resumed.window.to_dict() == straight.window.to_dict()
    assert resumed.episodes == straight.episodes and "device" in resumed.episodes


def test_state_from_another_reference_is_refused(reference: Reference) -> None:
    other = Reference.from_frame(datagen.generate(1000, seed=2), ["age"], [])
    with pytest.raises(ValueError, match="different reference profile"):
        DriftMonitor(reference).restore(DriftMonitor(other).state())
