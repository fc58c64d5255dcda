"""One ONNX graph from a raw record to the prediction: preprocessing fused with the trees.

Inputs are one [N, 1] tensor per raw feature (float for numbers, string for categories);
outputs are `label` and `probabilities` for classification, `prediction` for regression.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
import pandas as pd
import xgboost as xgb
from onnx import TensorProto, helper

from shipyard.bundle.schema import InputSchema
from shipyard.errors import ArtifactError

TARGET_OPSET = 15  # the highest onnxmltools' XGBoost converter supports
ML_OPSET = 2  # LabelEncoder with string keys and float values


def build_onnx(booster: xgb.Booster, schema: InputSchema) -> onnx.ModelProto:
    """Convert a trained booster and the schema's preprocessing into one self-contained graph."""
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    n = len(schema.features)
    unnamed = booster.copy()  # the converter reads features by position (f0, f1, ...)
    unnamed.feature_names = None
    unnamed.feature_types = None
    trees = convert_xgboost(
        unnamed,
        name="shipyard",
        initial_types=[("features", FloatTensorType([None, n]))],
        target_opset=TARGET_OPSET,
    )
    g = trees.graph
    # Raw inputs -> encoded [N, F] float tensor named `features`, which the trees consume.
    del g.input[:]
    nodes, concat_inputs = [], []
    for f in schema.features:
        if f.kind == "numeric":
            g.input.append(helper.make_tensor_value_info(f.name, TensorProto.FLOAT, [None, 1]))
            concat_inputs.append(f.name)
        else:
            g.input.append(helper.make_tensor_value_info(f.name, TensorProto.STRING, [None, 1]))
            out = f"{f.name}__code"
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [f.name],
                    [out],
                    domain="ai.onnx.ml",
                    name=f"encode_{f.name}",
                    keys_strings=list(f.categories),
                    values_floats=[float(i) for i in range(len(f.categories))],
                    default_float=float("nan"),
                )
            )
            concat_inputs.append(out)
    nodes.append(helper.make_node("Concat", concat_inputs, ["features"], axis=1, name="concat"))
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)

    # Canonical output names, whatever the converter called them.
    rename = {"variable": "prediction"} if schema.task == "regression" else {}
    for o in g.output:
        if o.name in rename:
            new = rename[o.name]
            for node in g.node:
                node.output[:] = [new if x == o.name else x for x in node.output]
            o.name = new
    domains = {imp.domain: imp for imp in trees.opset_import}
    if "" not in domains:  # the trees alone use only ai.onnx.ml; Concat needs the default domain
        trees.opset_import.append(helper.make_opsetid("", TARGET_OPSET))
    if domains["ai.onnx.ml"].version < ML_OPSET:
        domains["ai.onnx.ml"].version = ML_OPSET
    trees.producer_name = "shipyard"
    trees.doc_string = f"shipyard {schema.task} model; inputs: {', '.join(schema.names)}"
    onnx.checker.check_model(trees)
    model: onnx.ModelProto = trees
    return model


class OnnxPredictor:
    """An ONNX Runtime session over a Shipyard graph, fed from raw frames."""

    def __init__(self, model_bytes: bytes, schema: InputSchema, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.schema = schema
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Raw feed -> P(positive) [N] (binary), probabilities [N, K] or predictions [N]."""
        outs = dict(zip(self.output_names, self.session.run(None, feed), strict=True))
        if self.schema.task == "regression":
            return np.asarray(outs["prediction"]).reshape(-1)
        proba = np.asarray(outs["probabilities"])
        return proba[:, 1] if self.schema.task == "binary" else proba

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return self.run(self.schema.onnx_feed(df))


def native_predict(booster: xgb.Booster, schema: InputSchema, df: pd.DataFrame) -> np.ndarray:
    """The native pipeline: encode with the schema, predict with the booster (same shape as ONNX)."""
    return np.asarray(booster.inplace_predict(schema.encode(df)))


def parity(
    predictor: OnnxPredictor, booster: xgb.Booster, df: pd.DataFrame, tolerance: float
) -> dict[str, Any]:
    """Compare ONNX with the native pipeline on `df`; raise ArtifactError past the tolerance.

    Regression is compared relative to max(1, |prediction|): float32 trees cannot promise an
    absolute 1e-5 on targets in the thousands.
    """
    a = predictor.predict(df)
    b = native_predict(booster, predictor.schema, df).reshape(a.shape)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if predictor.schema.task == "regression":
        diff = diff / np.maximum(1.0, np.abs(b))
    worst = float(diff.max()) if diff.size else 0.0
    report = {
        "rows": len(df),
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "ok": worst <= tolerance,
    }
    if not report["ok"]:
        raise ArtifactError(
            f"ONNX export refused: max |ONNX - native| = {worst:.3g} on {len(df)} holdout rows "
            f"exceeds gates.parity_tolerance={tolerance}"
        )
    return report


def single_row_latency(
    predictor: OnnxPredictor, df: pd.DataFrame, n: int = 500, warmup: int = 50
) -> dict[str, float]:
    """p50/p99 in milliseconds of single-record inference, ONNX graph only (no HTTP)."""
    # One feed for the rows, cut into single-row feeds (a row at a time through pandas costs
    # ~5 ms each, more than the inference being timed).
    m = min(n, len(df))
    rows = predictor.schema.onnx_feed(df.iloc[:m])
    feeds = [{k: v[i : i + 1] for k, v in rows.items()} for i in range(m)]
    for i in range(warmup):
        predictor.run(feeds[i % len(feeds)])
    times = []
    for i in range(n):
        feed = feeds[i % len(feeds)]
        t0 = time.perf_counter()
        predictor.run(feed)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
