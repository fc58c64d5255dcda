"""One model version behind one deployment: ONNX Runtime predictions, batched across requests.

`VariantModel` is a plain class (testable without Serve); `serving.app` wraps it in a deployment.
The bundle is loaded through an injected loader; the default downloads the version from the
registry and verifies every checksum, so a corrupt or missing version never serves.
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
from shipyard.errors import InvalidInput
from shipyard.registry import Loader, registry_loader

logger = logging.getLogger(__name__)


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
        model, version = app.model, app.versions[variant]
        bundle = (loader or registry_loader)(model, version, app.tracking_uri)
        self.model, self.version, self.variant = model, int(version), variant
        self.schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
        self.predictor = OnnxPredictor(
            (bundle / "model.onnx").read_bytes(), self.schema, threads=v.onnx_threads
        )
        self._booster_path = bundle / "booster.ubj"
        self._booster: Any = None
        self.max_batch_size = v.max_batch_size
        batcher: Any = self._run_batched
        batcher.set_max_batch_size(v.max_batch_size)
        batcher.set_batch_wait_timeout_s(v.batch_wait_ms / 1000)
        self.faults = v.faults
        self.feeder: DriftFeeder | None = None
        if drift is not None:
            c = app.config.drift
            self.feeder = DriftFeeder(
                lambda batch: drift.ingest.remote(batch),
                batch_rows=c.batch_rows,
                flush_interval_s=c.flush_interval_s,
                max_buffer_rows=c.max_buffer_rows,
            )
        self.loaded_at = time.time()
        logger.info("variant %s loaded %s v%d from %s", variant, model, version, bundle)

    def info(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model": self.model,
            "model_version": self.version,
            "task": self.schema.task,
            "features": self.schema.names,
            "loaded_at": self.loaded_at,
        }

    async def _inject(self) -> None:
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.faults.error_rate and random.random() < self.faults.error_rate:
            raise InjectedFault(f"variant {self.variant!r}: injected failure (faults.error_rate)")

    async def predict(self, instances: list[Any]) -> dict[str, Any]:
        """Records -> predictions; a record that does not fit the schema raises InvalidRecord."""
        try:
            feed = self.schema.validate_records(instances)
        except InvalidInput as err:
            if self.feeder is not None and err.field:
                self.feeder.add_type_error(err.field)
            raise
        await self._inject()
        if len(instances) > self.max_batch_size:
            out = self.predictor.run(feed)  # already a batch: no point queueing it
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

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.001, batch_size_fn=_rows)
    async def _run_batched(self, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        if len(feeds) == 1:
            return [self.predictor.run(feeds[0])]
        merged = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        out = self.predictor.run(merged)
        sizes = np.cumsum([len(next(iter(f.values()))) for f in feeds])[:-1]
        return list(np.split(out, sizes))

    def format(self, out: np.ndarray) -> dict[str, Any]:
        """Model output -> response fields, plus `score` (one number per record, for statistics)."""
        task = self.schema.task
        classes = list(self.schema.classes)
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

        feed = self.schema.validate_records([instance])  # InvalidRecord
        if self._booster is None:
            self._booster = xgb.Booster()
            self._booster.load_model(str(self._booster_path))
        x = self.schema.encode_feed(feed)
        dm = xgb.DMatrix(x, missing=np.nan, feature_names=self.schema.names)
        contribs = np.asarray(self._booster.predict(dm, pred_contribs=True))[0]
        margin = np.asarray(self._booster.predict(dm, output_margin=True))[0]
        names = self.schema.names
        out: dict[str, Any] = {
            "margin": np.asarray(margin).astype(float).tolist(),
            "output": "log-odds" if self.schema.task != "regression" else "prediction",
        }
        if contribs.ndim == 1:  # binary / regression: [features + bias]
            out["base_value"] = float(contribs[-1])
            out["contributions"] = dict(
                zip(names, contribs[:-1].astype(float).tolist(), strict=True)
            )
        else:  # multiclass: [classes, features + bias]
            out["base_value"] = {
                str(c): float(contribs[k, -1]) for k, c in enumerate(self.schema.classes)
            }
            out["contributions"] = {
                str(c): dict(zip(names, contribs[k, :-1].astype(float).tolist(), strict=True))
                for k, c in enumerate(self.schema.classes)
            }
        return out
