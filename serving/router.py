"""The ingress: routes each request to a variant, mirrors shadows, streams statistics.

Routing decisions are local (a bucket table fetched from the experiment store), so the store is
never on a request's critical path: request records are buffered (`serving.records`) and flushed
in batches, and a slow or failing store or shadow (`serving.shadow`) never slows or fails a live
request. Parsing, limits, admin auth and the mapping from errors to statuses are the edge's
(`serving.edge`); the router builds its FastAPI app per replica (`__serve_build_asgi_app__`), so
it is a plain class that tests drive over HTTP without Ray.
"""

# No `from __future__ import annotations`: FastAPI resolves route signatures at runtime.

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from ray import serve

from serving.admin import Admin
from serving.auth import Auth
from serving.calls import awaited
from serving.edge import (
    FeedbackRequest,
    PredictRequest,
    status_of,
)
from serving.metrics import RouterMetrics
from serving.monitor_routes import MonitorRoutes
from serving.pool import VariantPool
from serving.records import RecordBuffer
from serving.routes import build_api
from serving.settings import AppSettings
from serving.shadow import ShadowMirror
from serving.store_client import StoreClient
from shipyard.ab.routing import Allocation, shadow_hit
from shipyard.ab.segments import SegmentLog
from shipyard.errors import (
    InvalidField,
    InvalidInput,
    NotLoaded,
    PayloadTooLarge,
    ShipyardError,
    Unavailable,
)
from shipyard.monitoring.capture import Capture
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 5.0  # how often the router asks each variant whether it has loaded
COLLECT_INTERVAL_S = 5.0  # how often it has the store look for segments a dead router left
KeyHeader = Annotated[
    str | None,
    Header(min_length=1, max_length=256, description="The randomisation key, as a header."),
]
VariantHeader = Annotated[
    str | None, Header(description="Pin a variant (left out of the A/B statistics).")
]


def _key_hash(key: str) -> str:
    """Keys are user identifiers: statistics and logs keep a hash, never the key."""
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


class Router:
    def __init__(
        self,
        app: AppSettings,
        models: dict[str, Any],
        store: Any,
        drifts: dict[str, Any] | None = None,
        retrain: Any = None,
    ) -> None:
        self.settings = app
        self.cfg = app.config
        self.versions = app.versions
        self.pool = VariantPool(models, self.cfg.limits)
        self.store = StoreClient(store, self.cfg.limits)
        self.drifts = drifts or {}
        self.admin = Admin(self.store, self._apply, retrain)
        self.monitor = MonitorRoutes(
            self.cfg, self.drifts, retrain, self.pool, self.versions, self._table
        )
        self.snapshot: dict[str, Any] = {"config_version": -1}
        self.allocation: Allocation | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.auth = Auth(self.cfg)
        self.metrics = RouterMetrics()
        segments = SegmentLog(StateDir(app.state_uri)) if self.cfg.ab.durable_answers else None
        self.records = RecordBuffer(self.store.ingest, self._refresh, segments=segments)
        self.capture = (
            Capture(StateDir(app.state_uri).child("capture"), self.cfg.model, self.cfg.capture)
            if self.cfg.capture.enabled else None
        )  # fmt: skip
        self.shadows = ShadowMirror(
            self.pool.predict,
            self.records.add,
            lambda name, outcome: self.metrics.shadow.inc(
                tags={"model": self.cfg.model, "variant": name, "outcome": outcome}
            ),
            list(self.versions),
            on_answer=self._capture_shadow,
        )

    # --- the HTTP app ---------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        return self.build_app()

    def build_app(self) -> Any:
        return build_api(self, self.admin, self.monitor, self.auth, self.cfg.limits.max_body_bytes)

    def _table(self) -> tuple[dict[str, Any], Allocation | None]:
        return self.snapshot, self.allocation

    # --- configuration --------------------------------------------------------------------------
    async def reconfigure(self, traffic: dict[str, Any]) -> None:
        """user_config from `serve deploy`: applied by the store only if it changed since."""
        try:
            await self.store.apply_deploy(traffic)
        except ShipyardError as err:
            raise ValueError(f"user_config rejected: {getattr(err, 'message', err)}") from None
        self._apply(await self.store.snapshot())
        if not self._tasks:
            if self.capture is not None:
                self.capture.start()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self.records.run()),
                loop.create_task(self._every(POLL_INTERVAL_S, self.check_store)),
                loop.create_task(self._every(HEALTH_INTERVAL_S, self.check_health)),
            ]
            if self.records.segments is not None:
                self._tasks.append(loop.create_task(self._every(COLLECT_INTERVAL_S, self.collect)))

    async def stop(self) -> None:
        """Stop the loops, then hand the store every record still buffered (a router killed
        outright loses at most the last `interval_s` of them: they are in flight)."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        await self.records.flush()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)

    def _apply(self, snapshot: dict[str, Any]) -> None:
        if snapshot["config_version"] == self.snapshot.get("config_version"):
            return
        self.allocation = Allocation.from_json(snapshot["allocation"])
        self.snapshot = snapshot
        for name, share in self.allocation.shares().items():
            self.metrics.weight.set(share, tags={"model": self.cfg.model, "variant": name})

    async def _refresh(self) -> None:
        self._apply(await self.store.snapshot())

    @staticmethod
    async def _every(interval_s: float, check: Callable[[], Awaitable[None]]) -> None:
        while True:
            await check()
            await asyncio.sleep(interval_s)

    async def check_store(self) -> None:
        """The store's probe (`StoreClient.check`): a changed table is applied; a store that does
        not answer is marked away and routing goes on from the local table."""
        changed = await self.store.check(self.snapshot.get("config_version"))
        if changed is not None:
            self._apply(changed)

    async def collect(self) -> None:
        """Have the store take the record segments a router left behind (its node lost)."""
        with contextlib.suppress(ShipyardError):  # the store away: the next round takes them
            await self.store.collect(self.cfg.ab.recover_after_s)

    async def check_health(self) -> None:
        """Variants that say they have not loaded go out of routing (`VariantPool`); capture
        learns the features from their answers."""
        await self.pool.check_health(list(self.versions), self._saw_variant)

    def _saw_variant(self, info: dict[str, Any]) -> None:
        if self.capture is not None and info.get("feature_kinds"):
            self.capture.set_features(info["feature_kinds"])

    # --- helpers --------------------------------------------------------------------------------
    def _route(self, key: str | None, explicit: str | None) -> tuple[str, bool]:
        if explicit is not None:
            if explicit not in self.versions:
                raise InvalidInput(
                    f"header X-Shipyard-Variant: unknown variant {explicit!r}; "
                    f"variants: {sorted(self.versions)}"
                )
            return explicit, False
        if self.allocation is None:
            raise Unavailable("the router has no traffic table yet; retry shortly")
        return self.allocation.assign(key, self.snapshot["salt"]), True

    def _instances(self, body: PredictRequest) -> list[Any]:
        instances = body.records()
        limit = self.cfg.limits.max_instances
        if len(instances) > limit:
            raise PayloadTooLarge(
                f"{len(instances)} instances in one request; limits.max_instances={limit}"
            )
        return instances

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.get_running_loop().create_task(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- routes ---------------------------------------------------------------------------------
    async def predict(
        self,
        body: PredictRequest,
        x_shipyard_key: KeyHeader = None,
        x_shipyard_variant: VariantHeader = None,
    ) -> JSONResponse:
        """`_predict`'s answer, held until the request's A/B record is in a written segment
        (`ab.durable_answers`): an answered request survives the router's death."""
        try:
            return await self._predict(body, x_shipyard_key, x_shipyard_variant)
        finally:
            await self.records.saved()

    async def _predict(
        self,
        body: PredictRequest,
        x_shipyard_key: KeyHeader,
        x_shipyard_variant: VariantHeader,
    ) -> JSONResponse:
        """Answer with the variant the key is routed to. What a failure counts against is
        decided here, and only a variant's own failure counts against it:

        - a record the variant refuses (4xx) is the client's mistake: counted as rejected;
        - a treatment that fails (5xx), or has not answered within limits.fallback_after_s (its
          node lost: it leaves routing), is asked nothing more; control answers the records. If
          control answers, the failure was the treatment's (counted; the client gets control's
          answer). If control fails too, the records fail every model: an input failure;
        - a variant out of routing (its bundle did not load, or it was given up on): control
          answers its keys and they are counted as rerouted.
        """
        t0 = time.perf_counter()
        instances = self._instances(body)
        key = str(body.key) if body.key is not None else x_shipyard_key
        variant, ab = self._route(key, x_shipyard_variant)
        rid = uuid.uuid4().hex
        control = self.snapshot.get("control")
        record: dict[str, Any] = {"id": rid, "variant": variant, "version": self.versions[variant],
                                  "ab": ab, "key": _key_hash(key) if key is not None else None,
                                  "n": len(instances)}  # fmt: skip
        try:
            served = variant
            fallback = ab and variant != control and control in self.pool
            try:
                if fallback and variant in self.pool.down:
                    raise NotLoaded(self.pool.down[variant])
                out = await self.pool.predict(variant, instances, fallback)
            except Unavailable as err:  # NotLoaded and Unresponsive included
                if not fallback:
                    self._count(record, status_of(err), t0)
                    raise self._tag(err, variant, rid) from None
                if isinstance(err, NotLoaded):
                    self.pool.down[variant] = err.message
                    record["rerouted"] = True
                served = str(control)
                try:
                    out = await self.pool.predict(served, instances)
                except ShipyardError as again:
                    record["blame"] = "input"  # control failed on the same records
                    self._count(record, status_of(again), t0)
                    raise self._tag(again, served, rid) from None
                if not record.get("rerouted"):
                    self._count(record, status_of(err), t0)  # the treatment's own failure
            except ShipyardError as err:
                self._count(record, status_of(err), t0)
                raise self._tag(err, variant, rid) from None
            score = out.pop("score")
            if served == variant:
                self._count(record, 200, t0, pred=sum(score) / len(score))
            elif record.get("rerouted"):
                self._count(record, 200, t0)
            if ab:
                for name, share in self.snapshot["shadow"].items():
                    if shadow_hit(key, name, share, self.snapshot["salt"]):
                        self.shadows.mirror(name, instances, out, rid)
        except ShipyardError as err:
            self._capture(rid, variant, instances, status_of(err), t0, record)
            raise
        routed_to = variant if served != variant else None
        self._capture(rid, served, instances, 200, t0, record, {**out, "score": score}, routed_to)
        answer = {**out, "variant": served, "model_version": str(self.versions[served]),
                  "request_id": rid}  # fmt: skip
        if served != variant:
            answer["routed_to"] = variant
        return JSONResponse(answer, headers={"X-Request-Id": rid})

    def _capture(
        self,
        rid: str,
        variant: str,
        instances: list[Any],
        status: int,
        t0: float,
        record: dict[str, Any],
        out: dict[str, Any] | None = None,
        routed_to: str | None = None,
    ) -> None:
        """One request's rows for request capture (a deque append; written off the path)."""
        if self.capture is not None:
            self.capture.add_request(
                rid, variant, self.versions[variant], instances, status,
                (time.perf_counter() - t0) * 1e3, key_hash=record.get("key"),
                routed_to=routed_to, out=out,
            )  # fmt: skip

    def _capture_shadow(
        self, name: str, instances: list[Any], out: dict[str, Any] | None, ms: float, rid: str
    ) -> None:
        if self.capture is not None:
            self.capture.add_request(rid, name, self.versions[name], instances,
                                     200 if out is not None else 503, ms, shadow=True, out=out)  # fmt: skip

    def _count(self, record: dict[str, Any], status: int, t0: float, **fields: Any) -> None:
        """One request's record for the A/B statistics, and its metrics."""
        latency_ms = (time.perf_counter() - t0) * 1e3
        self.records.add(**record, status=status, latency_ms=latency_ms, **fields)
        tags = {"model": self.cfg.model, "variant": record["variant"]}
        self.metrics.requests.inc(tags={**tags, "status": str(status)})
        if status == 200:
            self.metrics.latency.observe(latency_ms, tags=tags)

    @staticmethod
    def _tag(err: ShipyardError, variant: str, rid: str) -> ShipyardError:
        err.context = {"variant": variant, "request_id": rid}  # type: ignore[attr-defined]
        return err

    async def explain(
        self,
        body: PredictRequest,
        x_shipyard_key: KeyHeader = None,
        x_shipyard_variant: VariantHeader = None,
    ) -> JSONResponse:
        instances = self._instances(body)
        if len(instances) != 1:
            raise InvalidField(f"instances: explain takes one record, got {len(instances)}")
        key = str(body.key) if body.key is not None else x_shipyard_key
        variant, ab = self._route(key, x_shipyard_variant)
        if ab and variant in self.pool.down and self.snapshot.get("control") in self.pool:
            variant = str(self.snapshot["control"])  # out of routing: control explains its keys
        out = await self.pool.explain(variant, instances[0])
        return JSONResponse(
            {**out, "variant": variant, "model_version": str(self.versions[variant])}
        )

    async def feedback(self, body: FeedbackRequest) -> JSONResponse:
        outcome = float(body.outcome)
        await self.records.flush()  # the request it refers to may still be in the buffer
        ok = await self.store.feedback(body.request_id, outcome)
        if self.capture is not None:
            self.capture.add_feedback(body.request_id, outcome, ok["joined"], ok.get("variant"))
        if ok["joined"] and self.cfg.performance.outcome_is_label and ok["variant"] in self.drifts:
            self._tell_drift(ok["variant"], ok["prediction"], outcome)
        # 202: held until its request arrives; 200: joined, or kept as not counted (the
        # request failed, or another variant answered it: it counts for no variant)
        return JSONResponse(ok, status_code=202 if ok.get("status") == "pending" else 200)

    def _tell_drift(self, variant: str, prediction: Any, outcome: float) -> None:
        """Performance drift: the labelled prediction goes to the variant's drift actor, off the
        request path (a slow or dead actor loses the pair, never the /feedback answer)."""
        if prediction is not None:
            self._spawn(awaited(self.drifts[variant].outcome.remote(float(prediction), outcome)))

    async def ab(self) -> JSONResponse:
        await self.records.flush()
        report = await self.store.report()
        segments = self.records.segments
        report["router"] = {
            "dropped_records": self.records.dropped,
            "records": segments.stats() if segments is not None else {"durable_answers": False},
            "capture": self.capture.stats() if self.capture is not None else {"enabled": False},
        }
        return JSONResponse(report)

    async def healthz(self) -> dict[str, Any]:
        """200 once the router can route; 503 (load balancers take it out) until then."""
        if self.allocation is None:
            raise Unavailable("the router has no traffic table yet; retry shortly")
        return {"ok": True, "model": self.cfg.model}


class ServeRouter(Router):
    async def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully (a redeploy, a scale-down, a
        drained node): the answered requests still buffered go to the store first."""
        await self.stop()


Ingress = serve.ingress()(ServeRouter)
