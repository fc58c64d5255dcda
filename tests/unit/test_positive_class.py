"""One positive class everywhere: however a binary target is written, the class the job takes as
positive (`data.positive_class`, else the documented rule) is class 1 for XGBoost, the baseline,
the metrics, the ONNX graph's probability and the label the Serve variant answers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from serving.model import VariantModel
from serving.settings import AppSettings
from shipyard.bundle.graph import OnnxPredictor, build_onnx
from shipyard.bundle.schema import Feature, InputSchema
from shipyard.config.jobs import DataSection
from shipyard.config.serving import ServingConfig
from shipyard.errors import DataValidationError
from shipyard.training import evaluation as ev
from shipyard.training import fit
from shipyard.training.dataspec import check_classes
from tests.unit.test_edge import _outside_serve

# (positive value, negative value, data.positive_class): the positive class is the first value.
ENCODINGS = {
    "0/1": (1, 0, None),
    "True/False": (True, False, None),
    "yes/no": ("yes", "no", None),
    "Y/N": ("Y", "N", None),
    "Positive/negative": ("Positive", "negative", None),
    "yes/zzz (the rule, not the order)": ("yes", "zzz", None),
    "churned/stayed": ("churned", "stayed", "churned"),
    "'1'/'0' named by a YAML 1": ("1", "0", 1),
    "yes/no named by a YAML yes (a boolean)": ("yes", "no", True),
}


def table(pos: Any, neg: Any, n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """`x` above 0 (and region a) makes the positive class likely."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    region = rng.choice(["a", "b"], n)
    p = 1 / (1 + np.exp(-(3 * x + (region == "a"))))
    y = np.where(rng.random(n) < p, 1, 0)
    target = pd.Series([pos if v else neg for v in y], dtype=object)
    return pd.DataFrame({"x": x, "region": region, "target": target})


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_the_positive_class_is_class_one_everywhere(
    encoding: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pos, neg, named = ENCODINGS[encoding]
    df = table(pos, neg)
    counts = df["target"].value_counts().to_dict()
    classes = check_classes("binary", "target", counts, named)
    assert classes == [neg, pos]
    features = (Feature("x", "numeric"), Feature("region", "categorical", ("a", "b")))
    schema = InputSchema("binary", "target", features, tuple(classes))
    y = schema.encode_target(df["target"])
    assert (y == (df["target"] == pos)).all()

    # XGBoost (trained on the encoded label, as the Ray Train workers are), the baseline and
    # the metrics agree that high x means the positive class.
    params = fit.booster_params("binary", {"max_depth": 3}, 2, 1, False, 0)
    booster = xgb.train(params, xgb.DMatrix(schema.encode(df), label=y), 20)
    baseline = fit.fit_baseline(df, schema, 0)
    assert ev.task_metrics("binary", y, fit.baseline_predict(baseline, df, schema))["auc"] > 0.8
    onnx = OnnxPredictor(build_onnx(booster, schema).SerializeToString(), schema)
    p = onnx.predict(df)
    assert ev.task_metrics("binary", y, p)["auc"] > 0.8

    # The ONNX graph behind a Serve variant answers the positive label for a clearly positive
    # record, with its probability.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "input_schema.json").write_text(schema.to_json())
    (bundle / "model.onnx").write_bytes(build_onnx(booster, schema).SerializeToString())
    booster.save_model(str(bundle / "booster.ubj"))
    _outside_serve(monkeypatch)
    cfg = ServingConfig.model_validate(
        {"model": "m", "variants": [{"name": "control", "version": 1, "weight": 100}]}
    )
    app = AppSettings(config=cfg, versions={"control": 1}, state_uri=str(tmp_path / "s"),
                      review_dir=str(tmp_path / "s"), events_path=str(tmp_path / "e.jsonl"))  # fmt: skip
    variant = VariantModel(app, "control", loader=lambda *_: contextlib.nullcontext(bundle))
    out = asyncio.run(variant.predict([{"x": 3.0, "region": "a"}, {"x": -3.0, "region": "b"}]))
    assert out["predictions"] == [pos, neg]
    assert out["probabilities"][0] > 0.9 > 0.1 > out["probabilities"][1]


def test_the_rule_without_a_named_class() -> None:
    # One class reads as positive (1/true/yes/y/positive, any case): it is, whatever the order.
    assert check_classes("binary", "t", {"YES": 1, "zebra": 1}) == ["zebra", "YES"]
    assert check_classes("binary", "t", {"positive": 1, "zzz": 1}) == ["zzz", "positive"]
    # None, or both, read as positive: the lexically last is.
    assert check_classes("binary", "t", {"stayed": 1, "churned": 1}) == ["churned", "stayed"]
    assert check_classes("binary", "t", {"yes": 1, "y": 1}) == ["y", "yes"]
    # Multiclass keeps the sorted order; the index is the output column.
    assert check_classes("multiclass", "t", {"b": 1, "c": 1, "a": 1}) == ["a", "b", "c"]


def test_a_positive_class_that_is_not_a_class_names_the_field_and_the_classes() -> None:
    with pytest.raises(
        DataValidationError, match=r"data.positive_class: 'lost'.*\['churned', 'stayed'\]"
    ):
        check_classes("binary", "t", {"stayed": 1, "churned": 1}, "lost")
    with pytest.raises(ValueError, match="positive_class applies to task binary"):
        DataSection(path="p", target="t", task="multiclass", positive_class="a")
