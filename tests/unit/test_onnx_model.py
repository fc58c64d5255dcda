from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shipyard.bundle.graph import (
    OnnxPredictor,
    build_onnx,
    native_predict,
    parity,
    single_row_latency,
)
from shipyard.bundle.schema import Feature, InputSchema
from shipyard.demo import datagen
from shipyard.errors import ArtifactError

TRAIN = datagen.generate(3000, seed=0)
FEATURES = tuple(
    [Feature(c, "numeric") for c in datagen.NUMERIC]
    + [
        Feature(c, "categorical", tuple(sorted(TRAIN[c].dropna().unique())))
        for c in datagen.CATEGORICAL
    ]
)


def make(task: str) -> tuple[InputSchema, xgb.Booster]:
    if task == "binary":
        schema = InputSchema(task, "churned", FEATURES, (0, 1))
        y = TRAIN["churned"].to_numpy()
        params: dict[str, Any] = {"objective": "binary:logistic"}
    elif task == "multiclass":
        schema = InputSchema(
            task, "plan", FEATURES[:-3] + FEATURES[-2:], ("basic", "enterprise", "free", "pro")
        )
        y = schema.encode_target(TRAIN["plan"])
        params = {"objective": "multi:softprob", "num_class": 4}
    else:
        schema = InputSchema(
            task, "avg_basket", tuple(f for f in FEATURES if f.name != "avg_basket")
        )
        y, params = TRAIN["avg_basket"].fillna(0).to_numpy(), {"objective": "reg:squarederror"}
    booster = xgb.train({**params, "max_depth": 4}, xgb.DMatrix(schema.encode(TRAIN), label=y), 30)
    return schema, booster


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_parity_with_native_pipeline_on_drifted_raw_data(task: str) -> None:
    schema, booster = make(task)
    predictor = OnnxPredictor(build_onnx(booster, schema).SerializeToString(), schema)
    # unseen categories, a missing-value spike and shifted numbers all go through one graph
    raw = pd.concat(
        [datagen.generate(500, seed=s, scenario=sc) for s, sc in
         [(1, "none"), (2, "unseen_categories"), (3, "missing_spike"), (4, "covariate_shift")]]
    )  # fmt: skip
    report = parity(predictor, booster, raw, 1e-5)
    assert report["ok"] and report["rows"] == 2000
    out = predictor.predict(raw)
    assert out.shape == ((2000, 4) if task == "multiclass" else (2000,))


def test_graph_takes_raw_inputs_and_names_outputs() -> None:
    schema, booster = make("binary")
    model = build_onnx(booster, schema)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert set(inputs) == set(schema.names)
    assert inputs["country"] == 8 and inputs["age"] == 1  # STRING, FLOAT
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]


def test_parity_refuses_a_mismatched_graph() -> None:
    schema, booster = make("binary")
    other = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2},
        xgb.DMatrix(schema.encode(TRAIN), label=1 - TRAIN["churned"]), 5,
    )  # fmt: skip
    predictor = OnnxPredictor(build_onnx(other, schema).SerializeToString(), schema)
    with pytest.raises(ArtifactError, match="ONNX export refused"):
        parity(predictor, booster, TRAIN.head(200), 1e-5)


def test_native_predict_and_latency() -> None:
    schema, booster = make("binary")
    p = native_predict(booster, schema, TRAIN.head(10))
    assert p.shape == (10,) and ((p > 0) & (p < 1)).all()
    predictor = OnnxPredictor(build_onnx(booster, schema).SerializeToString(), schema)
    lat = single_row_latency(predictor, TRAIN.head(50), n=50, warmup=5)
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]
    np.testing.assert_allclose(predictor.predict(TRAIN.head(10)), p, atol=1e-6)
