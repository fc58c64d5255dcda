"""Baselines for the serving benchmark: the same validation and ONNX model, without Shipyard.

`uvicorn benchmarks.bare_server:app` (bundle from $BENCH_BUNDLE) is the no-Ray limit;
`minimal_serve_app(bundle)` is the smallest Ray Serve app doing the same work.
"""

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from shipyard.bundle.graph import OnnxPredictor
from shipyard.bundle.schema import InputSchema


class Predictor:
    def __init__(self, bundle: str) -> None:
        path = Path(bundle)
        self.schema = InputSchema.from_dict(json.loads((path / "input_schema.json").read_text()))
        self.predictor = OnnxPredictor((path / "model.onnx").read_bytes(), self.schema)

    def predict(self, body: Any) -> dict[str, Any]:
        p = self.predictor.run(self.schema.validate_records(body["instances"]))
        return {"predictions": (p >= 0.5).astype(int).tolist(), "probabilities": p.tolist()}


app = FastAPI()
_state: dict[str, Predictor] = {}


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    if "p" not in _state:
        _state["p"] = Predictor(os.environ["BENCH_BUNDLE"])
    return {"ok": True}


@app.post("/predict")
async def predict(request: Request) -> JSONResponse:
    return JSONResponse(_state["p"].predict(json.loads(await request.body())))


minimal_api = FastAPI()


@serve.ingress(minimal_api)
class MinimalModel:
    def __init__(self, bundle: str) -> None:
        self.p = Predictor(bundle)

    @minimal_api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        return JSONResponse(self.p.predict(json.loads(await request.body())))


def minimal_serve_app(bundle: str) -> Any:
    return serve.deployment(name="model", ray_actor_options={"num_cpus": 0})(MinimalModel).bind(
        bundle
    )
