"""Behavioural tests of the registered model (Made With ML style): invariance, direction, minimum
quality on a slice. They score the ONNX graph the serving side will load, on fresh data."""

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from shipyard.bundle.graph import OnnxPredictor
from shipyard.bundle.schema import InputSchema
from shipyard.demo import datagen
from shipyard.registry import CHAMPION
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def model(
    trained: dict[str, Any], registry: Any, tmp_path_factory: pytest.TempPathFactory
) -> OnnxPredictor:
    bundle = registry.download(MODEL, CHAMPION, tmp_path_factory.mktemp("model"))
    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    return OnnxPredictor((bundle / "model.onnx").read_bytes(), schema)


FRESH = datagen.generate(4000, seed=2024)


def shuffled(column: str) -> pd.DataFrame:
    return FRESH.assign(**{column: np.random.default_rng(0).permutation(FRESH[column].to_numpy())})


def test_invariant_to_an_irrelevant_feature(model: OnnxPredictor) -> None:
    # Trees fit some noise, so predictions move a little (how much depends on the run); what
    # must hold is that the irrelevant column costs no ranking quality and moves predictions
    # far less than a real driver does.
    p = model.predict(FRESH)
    noise = model.predict(shuffled("noise"))
    driver = model.predict(shuffled("sessions_30d"))
    auc = roc_auc_score(FRESH["churned"], p)
    assert auc - roc_auc_score(FRESH["churned"], noise) < 0.005
    assert auc - roc_auc_score(FRESH["churned"], driver) > 0.02
    assert np.abs(noise - p).mean() < np.abs(driver - p).mean() / 3


def test_more_sessions_lower_churn(model: OnnxPredictor) -> None:
    rows = FRESH.head(800)
    means = [
        model.predict(rows.assign(sessions_30d=float(s))).mean() for s in (2, 6, 10, 14, 18, 26)
    ]
    # Non-increasing (trees are flat where training data is sparse) with a real overall drop.
    assert all(a >= b for a, b in itertools.pairwise(means)), means
    assert means[0] - means[-1] > 0.15, means
    low, high = (
        model.predict(rows.assign(sessions_30d=2.0)),
        model.predict(rows.assign(sessions_30d=26.0)),
    )
    assert (high < low).mean() > 0.8


def test_minimum_quality_overall_and_on_a_slice(model: OnnxPredictor) -> None:
    p = model.predict(FRESH)
    assert roc_auc_score(FRESH["churned"], p) > 0.72
    desktop = (FRESH["device"] == "desktop").to_numpy()
    assert roc_auc_score(FRESH["churned"][desktop], p[desktop]) > 0.70


def test_unseen_and_missing_inputs_still_predict(model: OnnxPredictor) -> None:
    odd = pd.concat(
        [datagen.generate(200, seed=1, scenario=s) for s in ("unseen_categories", "missing_spike")]
    )
    p = model.predict(odd)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()


def test_reference_profile_path(registry: Any, tmp_path: Path) -> None:
    bundle = registry.download(MODEL, CHAMPION, tmp_path)
    assert json.loads((bundle / "reference_profile.json").read_text())["rows"] > 1000
