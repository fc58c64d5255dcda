"""One model version behind one deployment: ONNX Runtime predictions, batched across requests.

`VariantModel` is a plain class (testable without Serve); `serving.app` wraps it in a deployment.
The bundle is loaded through an injected loader; the default downloads the version from the
registry and verifies every checksum, so a corrupt or missing version never serves. A replica
that cannot load stays up and says why (`info`, and `NotLoaded` at once on every call) instead
of crash-looping: the router takes the variant out of routing, and the replica tries again every
`RELOAD_INTERVAL_S`. Nothing of a download outlives the load (everything is read into memory).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import numpy as np
from ray import serve

from serving.drift import DriftFeeder
from serving.settings import AppSettings
from shipyard.bundle.graph import OnnxPredictor
from shipyard.bundle.schema import InputSchema
from shipyard.errors import InvalidInput, NotLoaded
from shipyard.registry import Loader, registry_loader

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 30.0


class InjectedFault(RuntimeError):
    """Raised on purpose by a variant configured with `faults.error_rate` (canary drills)."""


def _rows(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(len(next(iter(f.values()))) for f in feeds)


class VariantModel:
    """Predict and explain with one registered version."""

    def __init__(
        self, app: AppSettings, variant: str, loader: Loader | None = None, drift: Any = None
    ) -> None:
        """`drift`: the variant's drift actor (a handle), fed off the request path."""
        v = app.variant(variant)
        self.model, self.version, self.variant = app.model, int(app.versions[variant]), variant
        self._load_args = (loader or registry_loader, app.tracking_uri, v.onnx_threads)
        self.schema: InputSchema | None = None
        self.predictor: OnnxPredictor | None = None
        self._booster_raw = b""
        self._booster: Any = None
        self.load_error: str | None = None
        self._load_tried = 0.0
        self.max_batch_size = v.max_batch_size
        # A queue per instance (decorating the method would share one across instances).
        self._run_batched = serve.batch(
            max_batch_size=v.max_batch_size,
            batch_wait_timeout_s=v.batch_wait_ms / 1000,
            batch_size_fn=_rows,
        )(self._run_batch)
        self.faults = v.faults
        self.feeder: DriftFeeder | None = None
        if drift is not None:
            self.feeder = DriftFeeder(lambda batch: drift.ingest.remote(batch), app.config.drift)
        self.loaded_at: float | None = None
        self._load()

    def _load(self) -> None:
        load, tracking_uri, threads = self._load_args
        self._load_tried = time.monotonic()
        try:
            with load(self.model, self.version, tracking_uri) as bundle:
                schema = InputSchema.from_dict(
                    json.loads((bundle / "input_schema.json").read_text())
                )
                predictor = OnnxPredictor(
                    (bundle / "model.onnx").read_bytes(), schema, threads=threads
                )
                booster_raw = (bundle / "booster.ubj").read_bytes()
        except Exception as err:
            self.load_error = f"{type(err).__name__}: {err}"[:500]
            logger.error("variant %s cannot load %s v%d: %s", self.variant, self.model,
                         self.version, self.load_error)  # fmt: skip
            return
        self.schema, self.predictor, self._booster_raw = schema, predictor, booster_raw
        self.load_error, self.loaded_at = None, time.time()
        logger.info("variant %s loaded %s v%d", self.variant, self.model, self.version)

    def _ready(self) -> tuple[InputSchema, OnnxPredictor]:
        if self.schema is None or self.predictor is None:
            raise NotLoaded(f"variant {self.variant!r} has not loaded {self.model} "
                            f"v{self.version}: {self.load_error}")  # fmt: skip
        return self.schema, self.predictor

    def info(self) -> dict[str, Any]:
        """What the router polls: loaded or not (and why), plus what was loaded. A replica that
        failed to load tries again here, at most every RELOAD_INTERVAL_S."""
        if self.schema is None and time.monotonic() - self._load_tried >= RELOAD_INTERVAL_S:
            self._load()
        return {
            "variant": self.variant,
            "model": self.model,
            "model_version": self.version,
            "loaded": self.schema is not None,
            "error": self.load_error,
            "task": self.schema.task if self.schema else None,
            "features": self.schema.names if self.schema else None,
            "feature_kinds": {f.name: f.kind for f in self.schema.features}
            if self.schema
            else None,
            "loaded_at": self.loaded_at,
        }

    async def _inject(self) -> None:
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.faults.error_rate and random.random() < self.faults.error_rate:
            raise InjectedFault(f"variant {self.variant!r}: injected failure (faults.error_rate)")

    async def predict(self, instances: list[Any]) -> dict[str, Any]:
        """Records -> predictions; a record that does not fit the schema raises InvalidRecord."""
        schema, predictor = self._ready()
        try:
            feed = schema.validate_records(instances)
        except InvalidInput as err:
            if self.feeder is not None and err.field:
                self.feeder.add_type_error(err.field)
            raise
        await self._inject()
        if len(instances) > self.max_batch_size:
            out = predictor.run(feed)  # already a batch: no point queueing it
        else:
            out = await self._run_batched(feed)
        if self.feeder is not None:
            self.feeder.add(feed, out if out.ndim == 1 else out.max(axis=1))
        return self.format(out)

    def drift_stats(self) -> dict[str, Any]:
        """Rows this replica has buffered, sent to and dropped for its drift actor."""
        return self.feeder.stats() if self.feeder is not None else {}

    async def drift_flush(self) -> dict[str, Any]:
        if self.feeder is not None:
            await self.feeder.flush()
        return self.drift_stats()

    async def _run_batch(self, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Several requests' feeds in one ONNX run (`serve.batch` gathers them)."""
        _, predictor = self._ready()
        if len(feeds) == 1:
            return [predictor.run(feeds[0])]
        merged = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        out = predictor.run(merged)
        sizes = np.cumsum([len(next(iter(f.values()))) for f in feeds])[:-1]
        return list(np.split(out, sizes))

    def format(self, out: np.ndarray) -> dict[str, Any]:
        """Model output -> response fields, plus `score` (one number per record, for statistics)."""
        schema, _ = self._ready()
        task = schema.task
        classes = list(schema.classes)
        if task == "regression":
            preds = out.astype(float).tolist()
            return {"predictions": preds, "score": preds}
        if task == "binary":
            p = out.astype(float)
            labels = [classes[int(x)] for x in (p >= 0.5)]
            return {"predictions": labels, "probabilities": p.tolist(), "score": p.tolist()}
        idx = out.argmax(axis=1)
        return {
            "predictions": [classes[int(i)] for i in idx],
            "probabilities": out.astype(float).tolist(),
            "score": out.max(axis=1).astype(float).tolist(),
        }

    def explain(self, instance: Any) -> dict[str, Any]:
        """Per-feature contributions (XGBoost SHAP values on the native booster) and base value."""
        import xgboost as xgb

        schema, _ = self._ready()
        feed = schema.validate_records([instance])  # InvalidRecord
        if self._booster is None:
            self._booster = xgb.Booster()
            self._booster.load_model(bytearray(self._booster_raw))
        x = schema.encode_feed(feed)
        dm = xgb.DMatrix(x, missing=np.nan, feature_names=schema.names)
        contribs = np.asarray(self._booster.predict(dm, pred_contribs=True))[0]
        margin = np.asarray(self._booster.predict(dm, output_margin=True))[0]
        names = schema.names
        out: dict[str, Any] = {
            "margin": np.asarray(margin).astype(float).tolist(),
            "output": "log-odds" if schema.task != "regression" else "prediction",
        }
        if contribs.ndim == 1:  # binary / regression: [features + bias]
            out["base_value"] = float(contribs[-1])
            out["contributions"] = dict(
                zip(names, contribs[:-1].astype(float).tolist(), strict=True)
            )
        else:  # multiclass: [classes, features + bias]
            out["base_value"] = {
                str(c): float(contribs[k, -1]) for k, c in enumerate(schema.classes)
            }
            out["contributions"] = {
                str(c): dict(zip(names, contribs[k, :-1].astype(float).tolist(), strict=True))
                for k, c in enumerate(schema.classes)
            }
        return out
