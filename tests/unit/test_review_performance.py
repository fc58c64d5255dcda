"""Performance drift statistics and the review queue's export into training data."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from shipyard.config.serving import PerformanceSection, ReviewSection
from shipyard.demo import datagen
from shipyard.errors import DataValidationError
from shipyard.monitoring.performance import PerformanceMonitor, auc_standard_error
from shipyard.monitoring.review import ReviewSampler, export


def test_auc_standard_error_matches_hanley_mcneil() -> None:
    # Hanley & McNeil (1982), table example: AUC 0.8, 50 positives, 50 negatives -> SE ~0.0443.
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(0.0443, abs=5e-4)
    assert auc_standard_error(0.8, 500, 500) < auc_standard_error(0.8, 50, 50)


def test_a_small_drop_or_a_small_sample_is_not_drift() -> None:
    rng = np.random.default_rng(1)
    mon = PerformanceMonitor(
        "binary", {"auc": 0.75}, PerformanceSection(window=1000, min_outcomes=200)
    )
    events = []
    for _ in range(150):  # below min_outcomes: not judged, however bad
        events += mon.add(float(rng.random()), float(rng.random() < 0.3), 0.0)
    assert not mon.judge()["judged"] and events == []
    mon = PerformanceMonitor("binary", {"auc": 0.75}, PerformanceSection(max_drop=0.05))
    y = (rng.random(1000) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(0.82 * y + rng.normal(0, 1, 1000))))  # binormal, AUC ~0.72
    for a, b in zip(p, y, strict=True):
        mon.add(float(a), float(b), 0.0)
    v = mon.judge()
    assert v["judged"] and 0.70 < v["value"] < 0.80 and not v["drifted"]


def test_regression_rmse_drift() -> None:
    rng = np.random.default_rng(2)
    mon = PerformanceMonitor("regression", {"rmse": 1.0}, PerformanceSection(min_outcomes=100))
    for _ in range(300):
        mon.add(0.0, float(rng.normal(0, 1.0)), 0.0)
    assert mon.judge()["judged"] and not mon.judge()["drifted"]
    events = []
    for _ in range(1000):
        events += mon.add(0.0, float(rng.normal(0, 1.5)), 5.0)
    assert mon.judge()["drifted"] and mon.judge()["value"] == pytest.approx(1.5, abs=0.1)
    assert [e["kind"] for e in events] == ["performance_drift_started"]
    assert PerformanceMonitor("multiclass", {"macro_f1": 0.8}).add(0.9, 1.0, 0.0) == []


def test_export_appends_labelled_rows_shaped_like_the_training_data(tmp_path: Path) -> None:
    train = datagen.generate(200, seed=3)
    like = tmp_path / "data" / "part-0.parquet"
    like.parent.mkdir()
    train.to_parquet(like, index=False)
    features = train.drop(columns=["churned", "ts", "customer_id"])
    feed = {str(k): features[k].to_numpy().reshape(-1, 1) for k in features}
    queue = tmp_path / "review" / "v1.csv"
    sampler = ReviewSampler(queue, ReviewSection(band=0.5, sample_rate=1.0), seed=0)
    assert sampler.offer(feed, np.full(len(features), 0.5), "control", 1) == 200
    rows = pd.read_csv(queue, dtype=str, keep_default_na=False)
    rows.loc[:9, "label"] = ["1", "0"] * 5  # a person labels ten rows
    rows.to_csv(queue, index=False)

    out = export(queue, like.parent, like, target="churned", time_column="ts")
    assert out["exported"] == 10 and out["remaining"] == 190
    assert pq.read_schema(out["path"]).remove_metadata() == pq.read_schema(like).remove_metadata()
    got = pd.read_parquet(out["path"])
    assert got["churned"].tolist() == [1, 0] * 5
    assert got["income"].tolist() == pytest.approx(train["income"].head(10).tolist(), rel=1e-6)
    assert got["customer_id"].isna().all()  # not a model input: unknown for reviewed rows
    assert len(pd.read_csv(queue)) == 190  # the unlabelled rows stay queued
    both = pd.concat([pd.read_parquet(like), got])  # the next run reads the directory
    assert len(both) == 210 and not math.isnan(both["income"].iloc[-1])


def test_a_bad_label_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    train = datagen.generate(50, seed=4)
    like = tmp_path / "part-0.parquet"
    train.to_parquet(like, index=False)
    features = train.drop(columns=["churned", "ts", "customer_id"])
    queue = tmp_path / "v1.csv"
    ReviewSampler(queue, ReviewSection(band=0.5, sample_rate=1.0)).offer(
        {str(k): features[k].to_numpy().reshape(-1, 1) for k in features}, np.full(50, 0.5), "c", 1
    )
    rows = pd.read_csv(queue, dtype=str, keep_default_na=False)
    rows.loc[0, "label"] = "maybe"
    rows.to_csv(queue, index=False)
    with pytest.raises(DataValidationError, match="column 'label'"):
        export(queue, tmp_path / "out", like, target="churned", time_column="ts")
    assert len(pd.read_csv(queue)) == 50 and not (tmp_path / "out").exists()


def test_review_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.cli import main

    train = datagen.generate(30, seed=5)
    like = tmp_path / "part-0.parquet"
    train.to_parquet(like, index=False)
    features = train.drop(columns=["churned", "ts", "customer_id"])
    queue = tmp_path / "v1.csv"
    sampler = ReviewSampler(queue, ReviewSection(band=0.5, sample_rate=1.0))
    sampler.offer({str(k): features[k].to_numpy().reshape(-1, 1) for k in features},
                  np.full(30, 0.5), "c", 1)  # fmt: skip
    rows = pd.read_csv(queue, dtype=str, keep_default_na=False)
    rows.loc[:2, "label"] = "1"
    rows.to_csv(queue, index=False)
    args = ["review", "export", "--queue", str(queue), "--into", str(tmp_path / "fresh"),
            "--like", str(like), "--target", "churned", "--time-column", "ts"]  # fmt: skip
    assert main(args) == 0
    assert '"exported": 3' in capsys.readouterr().out
    assert main([*args[:-4], "--target", "nope"]) == 2
    assert "target 'nope' is not a column" in capsys.readouterr().err
