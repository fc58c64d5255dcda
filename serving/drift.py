"""Drift actors: one per variant, fed by that variant's replicas, never on a request's path.

`DriftFeeder` lives in each model replica: `add` appends the request's feature columns and scores
to a buffer (a list append, nothing more) and a background task sends the buffer to the drift
actor every `flush_interval_s` or `batch_rows`. A slow or dead actor never slows or fails a
prediction: sends are not awaited by requests, and rows beyond `max_buffer_rows` are dropped and
counted.

`DriftActor` is a one-replica Serve deployment per variant (Serve restarts it if it dies). It
wraps `shipyard.monitoring.drift.DriftMonitor` against the version's registered reference profile, saves
its state every `checkpoint_s` and at every window (atomically) and resumes from it on restart,
writes drift_started / drift_resolved events (event log, webhook) and exports Prometheus gauges.

What a restart loses is counted, not hidden: every batch says how many rows its replica had
delivered before it, and the actor's saved state says how many of each replica's rows it holds;
rows delivered to an actor that died before saving them are `rows_lost` in `/drift` (rows a
replica could not deliver at all are its `dropped_rows`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from serving.generations import Generations
from serving.settings import AppSettings
from shipyard.config.serving import DriftSection
from shipyard.errors import Fenced, StaleState, StorageError
from shipyard.events import EventLog
from shipyard.monitoring.drift import PREDICTION, DriftMonitor, Reference
from shipyard.monitoring.performance import PerformanceMonitor
from shipyard.monitoring.retrain import drift_kinds
from shipyard.monitoring.review import ReviewSampler, queue_path
from shipyard.registry import Loader, registry_loader
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

Batch = dict[str, Any]  # {"feed": {column: array}, "scores": array, "type_errors": {field: n}}


class DriftFeeder:
    """Buffers rows in a replica and ships them to the drift actor in the background."""

    def __init__(
        self,
        send: Callable[[Batch], Awaitable[Any]],
        settings: DriftSection | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        """`settings`: the serving config's `drift` section (its defaults when None)."""
        settings = settings or DriftSection()
        self.send = send
        self.batch_rows = settings.batch_rows
        self.flush_interval_s = settings.flush_interval_s
        self.max_buffer_rows = settings.max_buffer_rows
        self.send_timeout_s = send_timeout_s
        self.feeds: list[dict[str, np.ndarray]] = []
        self.scores: list[np.ndarray] = []
        self.type_errors: dict[str, int] = {}
        self.rows = 0  # buffered
        self.sent_rows = 0
        self.dropped_rows = 0
        self.source = uuid.uuid4().hex[:12]  # this replica, for the actor's dropped-rows total
        self._sending: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def add(self, feed: dict[str, np.ndarray], scores: Any) -> None:
        """Called by a request after its prediction: O(1), never blocks, never raises."""
        n = len(next(iter(feed.values()))) if feed else 0
        if self.rows + n > self.max_buffer_rows:
            self.dropped_rows += n
            return
        self.feeds.append(feed)
        self.scores.append(np.asarray(scores, dtype=np.float64))
        self.rows += n
        self._ensure_loop()
        if self.rows >= self.batch_rows:
            self._kick()

    def add_type_error(self, field: str) -> None:
        self.type_errors[field] = self.type_errors.get(field, 0) + 1
        self._ensure_loop()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            # No running loop (a plain call): the next async caller starts it.
            with contextlib.suppress(RuntimeError):
                self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self._kick()

    def _kick(self) -> None:
        """Start a send unless one is in flight (one at a time: a slow actor backs up the
        buffer, which is bounded, instead of piling up requests on it)."""
        if self._sending is not None and not self._sending.done():
            return
        if not self.rows and not self.type_errors:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a plain call: the async flush loop sends it later
            return
        self._sending = loop.create_task(self._ship(self._take()))

    def _take(self) -> Batch:
        feeds, scores, errors, rows = self.feeds, self.scores, self.type_errors, self.rows
        self.feeds, self.scores, self.type_errors, self.rows = [], [], {}, 0
        feed = (
            {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]} if feeds else {}
        )  # fmt: skip
        return {
            "feed": feed,
            "scores": np.concatenate(scores) if scores else np.empty(0),
            "type_errors": errors,
            "rows": rows,
            "source": self.source,
            "dropped_total": self.dropped_rows,  # so far: the actor reports the sum over replicas
            "sent_total": self.sent_rows,  # delivered before this batch: what a restarted actor
            # holds less than that, it lost (rows_lost)
        }

    async def _ship(self, batch: Batch) -> None:
        try:
            await asyncio.wait_for(self.send(batch), self.send_timeout_s)
            self.sent_rows += batch["rows"]
        except Exception as err:  # dead, restarting or slow actor: count the loss, move on
            self.dropped_rows += batch["rows"]
            logger.warning("drift actor unavailable, dropped %d rows: %s", batch["rows"], err)

    async def flush(self) -> None:
        """Send everything buffered now and wait for it (tests, shutdown). The flush loop may
        start a send while this one waits, so it returns only when no send is in flight and
        nothing is buffered."""
        while True:
            if self._sending is not None and not self._sending.done():
                await asyncio.gather(self._sending, return_exceptions=True)
            elif self.rows or self.type_errors:
                await self._ship(self._take())
            else:
                return

    def stats(self) -> dict[str, int]:
        return {"buffered": self.rows, "sent": self.sent_rows, "dropped": self.dropped_rows}


class DriftActor:
    """The drift monitor of one variant (one version); a plain class, deployed by serving.app."""

    def __init__(
        self,
        app: AppSettings,
        variant: str,
        loader: Loader | None = None,
        retrain: Any = None,
        generations: Callable[[str], Any] | None = Generations,
    ) -> None:
        """`retrain`: the retraining coordinator (a handle; on_drift: retrain), told of drifts;
        `generations`: where each save's number is recorded cluster-wide (None: not checked)."""
        cfg = app.config
        model, version, section = app.model, app.versions[variant], cfg.drift
        with (loader or registry_loader)(model, version, app.tracking_uri) as bundle:
            profile = json.loads((bundle / "reference_profile.json").read_text())
            evaluation = json.loads((bundle / "evaluation.json").read_text())
        self.model, self.version, self.variant = model, int(version), variant
        self.monitor = DriftMonitor(Reference.from_profile(profile), section.settings())
        perf = cfg.performance
        self.performance = (
            PerformanceMonitor(evaluation["task"], evaluation["metrics"], perf)
            if perf.outcome_is_label else None
        )  # fmt: skip
        rv = cfg.review
        self.review = (
            ReviewSampler(queue_path(app.review_dir, self.version), rv)
            if rv.enabled and evaluation["task"] == "binary" else None
        )  # fmt: skip
        self.checkpoint_s = section.checkpoint_s
        self.state = StateDir(app.state_uri).child("drift")
        self.state_name = f"{variant}-v{self.version}.json"
        self.events = EventLog(app.events_path)
        self.retrain = retrain
        self._notices: set[asyncio.Task[None]] = set()
        self.restored_from: dict[str, Any] | None = None
        self.dropped: dict[str, int] = {}  # replica -> rows it could not deliver (cumulative)
        self.received: dict[str, int] = {}  # replica -> its rows this state holds (cumulative)
        self.lost: dict[str, int] = {}  # replica -> rows delivered to an actor that died unsaved
        # Each save is numbered and the number kept in Ray's GCS: a replica that finds older
        # state than that refuses to start, one that finds a newer save than its own stops.
        self.generation, self.fenced = 0, False
        self._generations = (
            generations(f"{self.state.uri}/{self.state_name}") if generations else None
        )
        self._restore()
        self._dirty = False
        self._saved_at = time.monotonic()
        self._review_at = time.monotonic()
        self._tick_task: asyncio.Task[None] | None = None
        self._gauges = self._init_metrics()

    # -- state --
    def _restore(self) -> None:
        raw = self.state.read(self.state_name)  # StorageError: not started, Serve retries
        known = self._generations.known() if self._generations is not None else 0
        if raw is None:
            self._refuse_if_behind(0, known)
            return
        try:
            state = json.loads(raw)
            self._refuse_if_behind(int(state.get("generation", 0)), known)
            self.generation = int(state.get("generation", 0))
            self.monitor.restore(state["monitor"])
            self.dropped = {str(k): int(v) for k, v in state.get("dropped", {}).items()}
            self.received = {str(k): int(v) for k, v in state.get("received", {}).items()}
            self.lost = {str(k): int(v) for k, v in state.get("lost", {}).items()}
            if self.performance is not None and state.get("performance"):
                self.performance.restore(state["performance"])
        except (ValueError, KeyError) as err:  # keep the file for a person to look at
            bad = self.state_name.replace(".json", ".unreadable.json")
            self.state.write(bad, raw)
            self.state.delete([self.state_name])
            logger.warning("drift state %s unreadable (%s); kept as %s", self.state_name, err, bad)
            self.generation = known  # starting afresh, after the newest save known
            return
        self.restored_from = {"rows": self.monitor.total_rows, "windows": self.monitor.windows}
        logger.info("drift %s v%d resumed: %s", self.variant, self.version, self.restored_from)

    def _refuse_if_behind(self, found: int, known: int) -> None:
        if found < known:
            raise StaleState(
                f"drift state {self.state.uri}/{self.state_name} is save {found}, but this app "
                f"has saved up to {known}: older state (a node-local state_uri read on another "
                "node?); refusing to resume from it. Set state_uri to object storage."
            )

    def check_health(self) -> None:
        """Serve's health check: a replica another has saved over since is replaced."""
        if self.fenced:
            raise Fenced(f"drift state {self.state_name}: another replica saved it since")

    def flush_review(self) -> None:
        """Write the sampled review rows (periodically: one CSV append per checkpoint period)."""
        if self.review is not None:
            try:
                self.review.flush()
            except OSError as err:  # the queue is advisory: drift counting goes on
                logger.warning("review queue %s: %s", self.review.path, err)

    def save(self) -> None:
        """Write the state (a new save number), unless another replica has saved since this one
        last did: then it stops saving (fenced) and its health check fails."""
        if self.fenced:
            return
        gens = self._generations
        if gens is not None and gens.known() > self.generation:
            self.fenced = True
            logger.error("drift %s: another replica saved its state since; this one stops "
                         "saving and will be replaced", self.variant)  # fmt: skip
            return
        state = {"model": self.model, "version": self.version, "variant": self.variant,
                 "generation": self.generation + 1,
                 "saved_at": time.time(), "monitor": self.monitor.state(),
                 "dropped": self.dropped, "received": self.received, "lost": self.lost,
                 "performance": self.performance.state() if self.performance else None}  # fmt: skip
        try:
            self.state.write(self.state_name, json.dumps(state, default=float))
        except StorageError as err:  # kept dirty: the next checkpoint writes it
            logger.warning("drift state not saved (retried next checkpoint): %s", err)
            return
        self.generation += 1
        if gens is not None:
            gens.record(self.generation)
        self._dirty = False
        self._saved_at = time.monotonic()

    # -- metrics --
    def _init_metrics(self) -> dict[str, Any]:
        import ray

        if not ray.is_initialized():  # a plain object (unit tests): no metrics to export
            return {}
        from ray.serve import metrics

        tags: Any = ("model", "variant", "feature")
        return {
            "score": metrics.Gauge(
                "shipyard_drift_score",
                description="Effect size (PSI or JS) of the last closed window, per feature.",
                tag_keys=tags,
            ),
            "drifted": metrics.Gauge(
                "shipyard_drift_drifted",
                description="1 while a feature (or __prediction__) is in a drift episode.",
                tag_keys=tags,
            ),
            "rows": metrics.Gauge(
                "shipyard_drift_rows",
                description="Rows a drift actor has counted.",
                tag_keys=("model", "variant"),
            ),
        }

    def _export(self) -> None:
        if not self._gauges:
            return
        base = {"model": self.model, "variant": self.variant}
        for name, f in self.monitor.status()["features"].items():
            tags = {**base, "feature": name}
            self._gauges["score"].set(float(f["score"]), tags=tags)
            self._gauges["drifted"].set(1.0 if f["since"] is not None else 0.0, tags=tags)
        self._gauges["rows"].set(float(self.monitor.total_rows), tags=base)

    # -- feeding --
    def _emit(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            kind = e.pop("kind")
            if kind == "drift_started" and self.retrain is not None:
                self._notify_retrain(e)
            if kind == "performance_drift_started" and self.retrain is not None:
                self._notify_retrain({"window": None, "features": ["__performance__"],
                                      "kinds": {"performance": [e["metric"]]}})  # fmt: skip
            self.events.emit(
                kind, model=self.model, version=self.version, variant=self.variant, **e
            )
            logger.warning("%s: %s v%d %s %s", kind, self.model, self.version, self.variant, e)
        if events:
            self._export()

    def _notify_retrain(self, event: dict[str, Any]) -> None:
        trigger = {"variant": self.variant, "version": self.version, "window": event["window"],
                   "kinds": event.get("kinds") or drift_kinds(event),
                   "features": event["features"]}  # fmt: skip

        async def tell() -> None:
            try:
                answer = await self.retrain.on_drift.remote(trigger)
                logger.info("retrain coordinator on %s drift: %s", self.variant, answer)
            except Exception:  # advisory: the drift alert has gone out either way
                logger.exception("could not reach the retrain coordinator")

        task = asyncio.get_running_loop().create_task(tell())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _ensure_ticker(self) -> None:
        if self._tick_task is None or self._tick_task.done():
            self._tick_task = asyncio.get_running_loop().create_task(self._ticker())

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.checkpoint_s))
            self._emit(self.monitor.tick())
            if self._dirty and time.monotonic() - self._saved_at >= self.checkpoint_s:
                self.save()
            if time.monotonic() - self._review_at >= self.checkpoint_s:  # also once traffic stops
                self.flush_review()
                self._review_at = time.monotonic()

    async def ingest(self, batch: Batch) -> dict[str, Any]:
        self._ensure_ticker()
        if batch.get("source"):
            self._account(str(batch["source"]), batch)
        windows = self.monitor.windows
        events = self.monitor.add(
            batch["feed"], batch.get("scores"), batch.get("type_errors") or None
        )
        self._dirty = True
        self._emit(events)
        scores = batch.get("scores")
        if self.review is not None and scores is not None and len(scores):
            try:
                self.review.offer(batch["feed"], scores, self.variant, self.version, 1000)
            except OSError as err:  # the queue is advisory: drift counting goes on
                logger.warning("review queue %s: %s", self.review.path, err)
        if self.monitor.windows != windows:  # a window closed: save now, export the verdict
            self.save()
            self._export()
        return {"rows": self.monitor.total_rows, "windows": self.monitor.windows}

    def _account(self, src: str, batch: Batch) -> None:
        """A replica's totals: what it could not deliver, and what it delivered that this
        state does not hold (an earlier actor took it, then died before saving it)."""
        self.dropped[src] = max(self.dropped.get(src, 0), int(batch.get("dropped_total", 0)))
        delivered, held = int(batch.get("sent_total", 0)), self.received.get(src, 0)
        if delivered > held:
            self.lost[src] = self.lost.get(src, 0) + delivered - held
            logger.warning("drift %s: %d rows from replica %s were lost with an earlier actor",
                           self.variant, delivered - held, src)  # fmt: skip
        # A send that timed out in the replica may still have arrived: count what arrived.
        self.received[src] = max(delivered, held) + int(batch.get("rows", 0))

    async def outcome(self, prediction: float, outcome: float) -> None:
        """A /feedback outcome joined to this variant's prediction (performance drift)."""
        self._ensure_ticker()
        if self.performance is not None:
            self._emit(self.performance.add(prediction, outcome, time.time()))
            self._dirty = True

    async def status(self) -> dict[str, Any]:
        status = self.monitor.status()
        perf = self.performance.judge() if self.performance is not None else None
        return {
            "model": self.model,
            "model_version": self.version,
            "variant": self.variant,
            "restored_from": self.restored_from,
            "dropped_rows": sum(self.dropped.values()),
            "rows_lost": sum(self.lost.values()),
            **status,
            "drifted": bool(status["drifted"] or (perf and perf["drifted"])),
            "performance": perf,
            "review": None
            if self.review is None
            else {"queue": str(self.review.path), "queued": self.review.queued},
        }

    async def report_data(self) -> dict[str, Any]:
        """Reference vs last-window proportions per feature (the HTML report's data)."""
        w = self.monitor.last_window
        out: dict[str, Any] = {}
        for name, ref in self.monitor.reference.tracked().items():
            cur = w.features[name].counts if w is not None else np.zeros(len(ref.counts))
            out[name] = {
                "bins": ref.bin_labels(),
                "reference": (ref.counts / max(1, ref.counts.sum())).tolist(),
                "current": (cur / max(1, cur.sum())).tolist(),
            }
        return {"status": await self.status(), "histograms": out, "prediction": PREDICTION}

    async def checkpoint(self) -> None:
        self.save()
        self.flush_review()
