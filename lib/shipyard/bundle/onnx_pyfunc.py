"""MLflow's loader for a Shipyard version (`mlflow.pyfunc.load_model`, `mlflow models serve`).

Copied into each version's MLflow model as `code/shipyard_onnx_pyfunc.py` and named in its
`MLmodel` as the pyfunc `loader_module`: MLflow imports it and calls `_load_pyfunc(path)` with
the version's own folder, which holds the same `model.onnx` and `input_schema.json` that the
Serve app loads (one set of files, under one manifest). It imports only ONNX Runtime, NumPy and
pandas, never Shipyard, and reads no pickle: a model from code, not a serialized object.

A frame of raw records (every feature a column; null is a missing value, an unseen category is
fine) becomes the graph's inputs exactly as the Serve app feeds them, and the answer is a frame:
`label` and one `probability_<class>` column per class (classification), or `prediction`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd


class ShipyardOnnxModel:
    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        with open(os.path.join(path, "input_schema.json")) as fh:
            schema = json.load(fh)
        self.task: str = schema["task"]
        self.classes: list[Any] = list(schema.get("classes") or [])
        self.features: list[dict[str, Any]] = schema["features"]
        self.session = ort.InferenceSession(
            os.path.join(path, "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]

    def feed(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        missing = [f["name"] for f in self.features if f["name"] not in frame.columns]
        if missing:
            raise ValueError(
                f"columns missing: {missing}; the model takes every feature (null = missing)"
            )
        feed = {}
        for f in self.features:
            col = frame[f["name"]]
            if f["kind"] == "numeric":
                values = pd.to_numeric(col, errors="coerce").to_numpy(
                    dtype=np.float32, na_value=np.nan
                )
            else:  # categories as text; missing ones (None, NaN, '') are ''
                values = col.astype("string").fillna("").to_numpy(dtype=object)
            feed[f["name"]] = values.reshape(-1, 1)
        return feed

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        outs = dict(zip(self.outputs, self.session.run(None, self.feed(frame)), strict=True))
        if self.task == "regression":
            return pd.DataFrame(
                {"prediction": np.asarray(outs["prediction"], dtype=np.float64).reshape(-1)}
            )
        proba = np.asarray(outs["probabilities"], dtype=np.float64)
        index = (proba[:, 1] >= 0.5).astype(int) if self.task == "binary" else proba.argmax(axis=1)
        answer: dict[str, Any] = {"label": [self.classes[int(i)] for i in index]}
        for k, c in enumerate(self.classes):
            answer[f"probability_{c}"] = proba[:, k]
        return pd.DataFrame(answer)


def _load_pyfunc(path: str, model_config: Any = None) -> ShipyardOnnxModel:
    return ShipyardOnnxModel(path)
