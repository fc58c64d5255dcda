import math

import numpy as np
import pytest
from sklearn import metrics as skm

from shipyard.config.jobs import GatesSection
from shipyard.training import evaluation as ev
from shipyard.training import slices as sl


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = ev.task_metrics("binary", y, p)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))


def test_calibration_error() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)  # calibrated by construction
    assert ev.expected_calibration_error(y, p) < 0.01
    assert ev.expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1


def test_multiclass_and_regression() -> None:
    y = np.array([0, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.1 / 3
    m = ev.task_metrics("multiclass", y, proba)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, [0, 1, 2, 1], average="macro"))
    one_class = ev.task_metrics("multiclass", np.array([2, 2]), np.eye(3)[[2, 2]])
    assert one_class["macro_f1"] == 1.0  # a one-class slice predicted perfectly is perfect
    r = ev.task_metrics("regression", np.array([1.0, 2, 3]), np.array([1.0, 2, 4]))
    assert r["rmse"] == pytest.approx(math.sqrt(1 / 3)) and r["mae"] == pytest.approx(1 / 3)


def test_gates() -> None:
    g = GatesSection(
        baseline_margin=0.01, max_slice_gap=0.1, latency_budget_ms=1.0, champion_margin=0.0
    )
    ok = ev.check_gates("binary", g, {"auc": 0.8}, {"auc": 0.7}, {"auc": 0.79}, 0.1)
    assert ok == []
    reasons = ev.check_gates(
        "binary", g, {"auc": 0.8}, {"auc": 0.795}, {"auc": 0.81}, 2.0, ["slice c=b fails"]
    )
    text = "\n".join(reasons)
    assert len(reasons) == 4
    for needle in ("baseline_margin", "champion_margin", "slice c=b", "latency_budget_ms"):
        assert needle in text
    # lower-is-better metric: smaller RMSE is a positive lift
    assert ev.lift("regression", 1.0, 2.0) == 1.0


def test_a_broken_model_is_called_broken_before_any_gate() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.4).astype(int)
    good = np.clip(0.4 + 0.3 * (y - 0.4) + rng.normal(0, 0.2, 2000), 0, 1)
    assert sl.broken("binary", y, good, "yes") == []
    inverted = 1 - good
    (reason,) = sl.broken("binary", y, inverted, "yes")
    assert reason.startswith("broken: holdout auc 0.") and "positive class 'yes'" in reason
    # Worse than chance by less than its interval is weak, not broken.
    y40, p40 = np.r_[[1] * 20, [0] * 20], np.r_[np.arange(20), np.arange(20) + 1] / 40
    assert ev.task_metrics("binary", y40, p40)["auc"] == pytest.approx(0.45125)
    assert sl.broken("binary", y40, p40, "yes") == []
    (flat,) = sl.broken("binary", y, np.full(2000, 0.38), "yes")
    assert flat == (
        "broken: the model predicts the same for all 2000 holdout rows (0.38): it learnt "
        "nothing from the features"
    )
    assert sl.broken("regression", y.astype(float), good, None) == []
    assert sl.broken("multiclass", y, np.tile([0.2, 0.8], (2000, 1)), None)[0].startswith(
        "broken: the model predicts the same for all 2000 holdout rows ([0.2, 0.8])"
    )
    reasons = ev.check_gates(
        "binary", GatesSection(), {"auc": 0.3}, {"auc": 0.6}, None, 0.1, ["slice x"], ["broken"]
    )
    assert reasons[0] == "broken" and reasons[-1] == "slice x"
