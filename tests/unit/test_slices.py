"""The slice gate: standard errors, the family correction, the slices themselves, and the gate's
error rates measured by simulation (tests/simulations.py; README, "Verdicts")."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from shipyard.multiplicity import adjust, holm
from shipyard.training import slices as sl
from tests import simulations as sim


def test_delong_matches_auc_and_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    y, p = sim.binormal(rng, 400, 0.75, 0.3)
    auc, var = sl.delong(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p))
    boot = []
    for _ in range(1000):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            boot.append(roc_auc_score(y[i], p[i]))
    assert np.sqrt(var) == pytest.approx(np.std(boot), rel=0.1)


@pytest.mark.parametrize("levels", [None, 7])
def test_delong_auc_is_sklearns_on_small_samples_and_ties(levels: int | None) -> None:
    """Also what the drift actor's performance monitor judges labelled outcomes with (and the
    simulations' AUC, with which they replay the slice rule before)."""
    rng = np.random.default_rng(levels or 0)
    for n in (2, 5, 300):
        y = (rng.random(n) < 0.4).astype(float)
        y[:2] = [0.0, 1.0]
        p = rng.random(n) + 0.3 * y
        if levels:  # scores on a few levels: many ties, within and across the classes
            p = np.round(p * levels) / levels
        assert sl.delong(y, p)[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert sim.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)  # the old rule's


def test_rmse_and_macro_f1_errors_match_a_bootstrap() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=500)
    out = y + rng.standard_t(5, 500)
    rmse, se = sl.rmse_se(y, out)
    boot = [np.sqrt(np.mean((out[i] - y[i]) ** 2)) for i in rng.integers(0, 500, (2000, 500))]
    assert rmse == pytest.approx(np.sqrt(np.mean((out - y) ** 2)))
    assert se == pytest.approx(np.std(boot), rel=0.15)
    labels = rng.integers(0, 3, 400)
    proba = np.eye(3)[np.where(rng.random(400) < 0.7, labels, rng.integers(0, 3, 400))]
    f1, f1_se = sl.macro_f1_se(labels, proba, 3)
    from sklearn.metrics import f1_score

    assert f1 == pytest.approx(f1_score(labels, proba.argmax(1), average="macro"))
    assert 0.01 < f1_se < 0.05


def test_holm() -> None:
    # Worked example: p = (0.01, 0.04, 0.03, 0.005) -> (0.03, 0.06, 0.06, 0.02).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust([0.01, 0.5], "bonferroni") == [0.02, 1.0]
    assert adjust([0.01, 0.5], "none") == [0.01, 0.5]


def test_slices_pool_rare_values_bin_numbers_and_keep_missing() -> None:
    frame = pd.DataFrame(
        {
            "c": ["a"] * 50 + ["b"] * 40 + ["r1", "r2", "r3"] * 3 + [None],
            "x": [*range(99), np.nan],
        }
    )
    masks = {(c, v): m.sum() for c, v, m in sl.slice_masks(frame, ["c"], ["x"], 4, 30)}
    assert masks[("c", "a")] == 50 and masks[("c", "b")] == 40
    assert masks[("c", "<3 values under 30 rows>")] == 9
    assert masks[("c", sl.MISSING)] == 1 and masks[("x", sl.MISSING)] == 1
    assert sum(v for (c, _), v in masks.items() if c == "x") == 100
    assert len([k for k in masks if k[0] == "x"]) == 5  # four quartiles and the missing


def test_a_bad_slice_fails_a_small_one_is_reported_not_tested_and_single_class_says_why() -> None:
    rng = np.random.default_rng(2)
    good = [sim.binormal(rng, 1000, 0.85, 0.4) for _ in range(3)]
    bad = sim.binormal(rng, 600, 0.50, 0.4)
    small = sim.binormal(rng, 20, 0.20, 0.5)
    y = np.concatenate([a for a, _ in [*good, bad, small]] + [np.zeros(40, int)])
    p = np.concatenate([b for _, b in [*good, bad, small]] + [rng.random(40)])
    groups = ["g0"] * 1000 + ["g1"] * 1000 + ["g2"] * 1000 + ["bad"] * 600
    frame = pd.DataFrame({"g": groups + ["small"] * 20 + ["negatives"] * 40})
    report = sl.slice_report(
        "binary", frame, y, p, categorical=["g"], numeric=[], max_gap=0.15, min_rows=30
    )
    by = {s["value"]: s for s in report["slices"]}
    assert report["slices"][0]["value"] == "bad"  # worst first
    assert by["bad"]["verdict"] == "fails" and by["bad"]["ci95"][1] < report["overall"] - 0.15
    assert [s["value"] for s in report["slices"] if s["verdict"] == "fails"] == ["bad"]
    assert by["small"]["verdict"] == "untested" and by["small"]["ci95"] is not None
    assert "too few" in by["small"]["untested"]
    assert by["negatives"]["untested"] == "no AUC: every row is negative"
    reasons = sl.failures(report)
    assert len(reasons) == 1 and reasons[0].startswith("slice g=bad (600 rows): auc")
    assert "gates.max_slice_gap=0.15" in reasons[0] and "over 4 slices" in reasons[0]


def test_regression_gap_is_relative() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=4000) * 1000  # target units do not matter
    err = rng.normal(size=4000) * 100
    err[:500] *= 2  # slice "a": twice the error of the rest
    frame = pd.DataFrame({"g": ["a"] * 500 + ["b"] * 3500})
    report = sl.slice_report(
        "regression", frame, y, y + err, categorical=["g"], numeric=[], max_gap=0.15
    )
    by = {s["value"]: s for s in report["slices"]}
    assert report["gap_is"] == "fraction of the rmse expected on the slice's rows"
    # The error does not grow with the prediction: what a slice is expected to make is the
    # overall RMSE, and the gap is the plain fraction of it.
    assert report["error_scale"]["per_unit_of_prediction"] < 0.01, report["error_scale"]
    assert by["a"]["expected_rmse"] == pytest.approx(report["overall"], rel=0.05)
    assert by["a"]["gap"] == pytest.approx(0.7, abs=0.1)  # RMSE ~1.7x the overall's
    assert by["a"]["verdict"] == "fails" and by["b"]["verdict"] == "passes"
    (reason,) = sl.failures(report)
    assert reason.startswith("slice g=a (500 rows): rmse ") and " expected on its rows: " in reason


def test_error_scale_finds_constant_and_proportional_noise() -> None:
    rng = np.random.default_rng(5)
    size = rng.uniform(500, 15000, 20000)
    _, a, b = sl.error_scale(size + 300 * rng.normal(size=20000), size)
    assert b < 0.002 and a == pytest.approx(300, rel=0.05)  # constant: RMSE 300 everywhere
    scale, a, b = sl.error_scale(size * (1 + 0.1 * rng.normal(size=20000)), size)
    assert a < 0.05 * float(scale.mean()) and b == pytest.approx(0.1, rel=0.1)
    assert scale[size > 14000].mean() > 10 * scale[size < 1000].mean()


def test_regression_slices_whose_noise_grows_with_the_target_pass_and_a_worse_one_fails() -> None:
    # Equally good slices of prices from 500 to 15,000: the rule before refused every model.
    good = sim.regression_slice_gate(10, 300, proportional=True, reps=60)
    assert good["refused"] <= 0.05 and good["plain_refused"] >= 0.95, good
    # A slice of middling prices with 1.3x the error the model makes on rows like it (twice
    # the gap) is caught; the plain rule names only the expensive slices, never that one.
    bad = sim.regression_slice_gate(10, 1000, proportional=True, bad=0.3, reps=60)
    assert bad["caught"] >= 0.55 and bad["plain_caught"] <= 0.05, bad
    assert 0.2 <= bad["mean_gap_of_g0"] <= 0.3, bad  # partly absorbed by the fitted curve


def test_regression_slices_with_constant_noise_are_judged_as_before() -> None:
    good = sim.regression_slice_gate(20, 100, proportional=False, reps=60)
    assert good["refused"] <= 0.05 and good["plain_refused"] <= 0.05, good
    bad = sim.regression_slice_gate(20, 1000, proportional=False, bad=0.3, reps=40)
    assert bad["caught"] >= 0.9 and bad["plain_caught"] >= 0.9, bad


@pytest.mark.parametrize(("slices", "rows"), [(100, 60), (20, 100)])
def test_equally_good_slices_are_refused_at_most_5_percent_of_the_time(
    slices: int, rows: int
) -> None:
    result = sim.slice_gate(slices, rows, reps=60 if slices == 100 else 150, old_rule=slices == 100)
    assert result["refused"] <= 0.05, result
    if slices == 100:  # the point-estimate rule it replaces, on the same draws
        assert result["old_rule_refused"] >= 0.2, result


def test_a_slice_worse_by_twice_the_gap_is_caught_90_percent_of_the_time_at_300_rows() -> None:
    result = sim.slice_gate(20, 300, good=0.82, bad=0.50, reps=150)
    assert 0.28 <= result["mean_gap_of_g0"] <= 0.34, result  # "twice the gap" (0.15)
    assert result["caught"] >= 0.90, result
