"""Fairness on declared groups: Fairlearn's per-group rates, the two gaps with intervals, and the
gate's error rate at its bound, measured by simulation."""

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from shipyard.training import fairness
from tests import simulations as sim

BOUNDS = sim.FAIRNESS_BOUNDS


def test_groups_and_gaps_match_fairlearn() -> None:
    rng = np.random.default_rng(0)
    g, y, p = sim.draw_groups(rng, {"a": 0.3, "b": 0.5, "c": 0.4}, 2000)
    g = pd.concat([g, pd.Series(["tiny"] * 5, name="group")], ignore_index=True)
    y, p = np.r_[y, [1] * 5], np.r_[p, [0.9] * 5]
    report = fairness.group_report(y, p, g, threshold=0.5, min_rows=30, bounds=BOUNDS)
    assert report["groups"]["b"]["selection_rate"] == pytest.approx((p[g == "b"] >= 0.5).mean())
    assert report["groups"]["a"]["calibration_gap"] == pytest.approx(
        p[g == "a"].mean() - y[g == "a"].mean()
    )
    assert report["gapped_groups"] == ["a", "b", "c"]  # the 5-row group is reported, not gapped
    kept = (g != "tiny").to_numpy()
    dp = demographic_parity_difference(y[kept], p[kept] >= 0.5, sensitive_features=g[kept])
    eo = equalized_odds_difference(y[kept], p[kept] >= 0.5, sensitive_features=g[kept])
    gaps = report["gaps"]
    assert gaps["demographic_parity_difference"]["value"] == pytest.approx(dp)
    assert gaps["equalized_odds_difference"]["value"] == pytest.approx(eo)
    lo, hi = gaps["demographic_parity_difference"]["ci95"]
    assert lo < dp < hi and hi - lo < 0.1
    assert "p_value" not in gaps["equalized_odds_difference"]  # no bound: reported only


def test_a_gap_beyond_its_bound_fails_and_names_the_column() -> None:
    rng = np.random.default_rng(1)
    g, y, p = sim.draw_groups(rng, {"a": 0.3, "b": 0.5}, 1500)
    frame = pd.DataFrame({"group": g, "other": np.tile(["x", "y"], 1500)})
    report = fairness.fairness_report(
        frame, y, p, sensitive=["group", "other"], threshold=0.5, min_rows=30, bounds=BOUNDS,
        alpha=0.05, correction="holm",
    )  # fmt: skip
    assert len(report["failures"]) == 1
    assert report["failures"][0].startswith("fairness: demographic_parity_difference on group")
    assert "fairness.max_demographic_parity_difference=0.05" in report["failures"][0]
    other = report["columns"][1]["gaps"]["demographic_parity_difference"]
    assert other["verdict"] == "passes"


def test_at_its_bound_the_gate_refuses_at_most_alpha_and_catches_twice_the_bound() -> None:
    result = sim.fairness_gate(reps=400)
    assert result["refused_at_bound"] <= 0.07, result  # alpha 0.05 plus simulation error
    assert result["caught_at_twice_the_bound"] >= 0.5, result


def test_a_model_that_selects_nobody_gets_no_gap_but_not_estimable_with_counts() -> None:
    """Constant decisions make every rate equal: 'no disparity, with certainty' is the wrong
    verdict for a model that selects nobody. Both gaps say why they cannot be told."""
    from shipyard.training.verdicts import verdict_lines

    rng = np.random.default_rng(2)
    g, y, _ = sim.draw_groups(rng, {"a": 0.3, "b": 0.5}, 1500)
    p = np.full(len(y), 0.2)  # below the threshold for every row
    frame = pd.DataFrame({"group": g})
    report = fairness.fairness_report(
        frame, y, p, sensitive=["group"], threshold=0.5, min_rows=30, bounds=BOUNDS,
        alpha=0.05, correction="holm",
    )  # fmt: skip
    gaps = report["columns"][0]["gaps"]
    for gap in gaps.values():
        assert gap["value"] is None and gap["ci95"] is None
        assert gap["verdict"] == "not estimable"
        assert f"selects none of the {len(y)} rows at threshold 0.5" in gap["reason"]
    assert report["failures"] == []  # nothing to test; the sanity floor refuses such a model
    from shipyard.training.pipeline import fairness_metrics

    assert fairness_metrics(report) == {}  # no number logged to MLflow for a gap not told
    evaluation = {"slices": {"tested": 0, "correction": "holm", "alpha": 0.05, "max_gap": 0.1,
                             "gap_is": "auc points", "failed": 0, "untested": 0, "slices": []},
                  "primary_metric": "auc", "fairness": report}  # fmt: skip
    line = verdict_lines(evaluation)[-1]
    assert line.startswith("fairness on group (2 groups, threshold 0.5): demographic_parity not ")
    assert "equalized_odds not estimable (the model selects none" in line


def test_equalized_odds_leaves_out_groups_without_positives_and_says_so() -> None:
    rng = np.random.default_rng(3)
    g, y, p = sim.draw_groups(rng, {"a": 0.3, "b": 0.5, "c": 0.4}, 1500)
    y = np.where((g == "c").to_numpy(), 0, y)  # group c: no actual positive, TPR undefined
    y[np.flatnonzero((g == "c").to_numpy())[:4]] = 1  # ... four: too few to estimate it
    report = fairness.group_report(y, p, g, threshold=0.5, min_rows=30, bounds=BOUNDS)
    eo = report["gaps"]["equalized_odds_difference"]
    assert eo["left_out"] == [f"c (4 positive, {int(((g == 'c') & (y == 0)).sum())} negative)"]
    kept = (g != "c").to_numpy()
    expected = equalized_odds_difference(y[kept], p[kept] >= 0.5, sensitive_features=g[kept])
    assert eo["value"] == pytest.approx(expected)
    assert report["gaps"]["demographic_parity_difference"]["value"] is not None  # over all three
    # With one group left, there is no gap to tell.
    two = (g != "b").to_numpy()
    report = fairness.group_report(y[two], p[two], g[two], threshold=0.5, min_rows=30,
                                   bounds=BOUNDS)  # fmt: skip
    eo = report["gaps"]["equalized_odds_difference"]
    assert eo["verdict"] == "not estimable" and "c (4 positive" in eo["reason"]
