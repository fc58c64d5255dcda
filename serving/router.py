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
import hashlib
import hmac
import logging
import os
import time
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

from serving.edge import (
    ADMIN_ERRORS,
    DATA_ERRORS,
    BodyGuard,
    Decision,
    ExplainResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    TrafficState,
    install_error_handlers,
    status_of,
)
from serving.records import RecordBuffer
from serving.settings import AppSettings
from serving.shadow import ShadowMirror
from shipyard.ab.routing import Allocation, shadow_hit
from shipyard.config.serving import TrafficUpdate
from shipyard.errors import (
    Forbidden,
    InvalidField,
    InvalidInput,
    NotFound,
    NotLoaded,
    PayloadTooLarge,
    ShipyardError,
    StorageError,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
)
from shipyard.monitoring.capture import Capture
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 5.0  # how often the router asks each variant whether it has loaded
# Calls that write: a registry alias, or the journal on an object store (tens of ms a put, more
# under load). They get limits.timeout_s, not the probe's; a store known to be away still
# answers 503 at once (store_away, set by the probe).
SLOW_STORE_CALLS = {"set_traffic", "promote", "rollback", "ingest", "feedback"}
bearer = HTTPBearer(auto_error=False, description="The admin token (admin_token_env).")
api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key (api_keys_env), when set."
)
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


async def _awaitable(response: Any) -> Any:
    return await response


def _replica_counts() -> dict[str, int]:
    """Running replicas per deployment of this app, from the Serve controller."""
    try:
        app = serve.get_replica_context().app_name
        status = serve.status().applications[app]
        return {
            name: int(sum(n for state, n in d.replica_states.items() if state == "RUNNING"))
            for name, d in status.deployments.items()
        }
    except Exception as err:  # informational only
        logger.info("replica counts unavailable: %s", err)
        return {}


def _health_error(info: Any) -> str | None:
    if isinstance(info, BaseException):
        return "no answer from the variant (restarting?)"
    error = info.get("error")
    return None if error is None else str(error)


class _NoMetric:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...


class Router:
    # Serve's metric classes, or no-op stand-ins outside Ray (unit tests).
    m_requests: Any
    m_latency: Any
    m_shadow: Any
    m_weight: Any

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
        self.models = models
        self.store = store
        self.drifts = drifts or {}
        self.retrain = retrain
        self.snapshot: dict[str, Any] = {"config_version": -1}
        self.allocation: Allocation | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._token = os.environ.get(self.cfg.admin_token_env) or None
        keys = os.environ.get(self.cfg.api_keys_env, "")
        self._api_keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self.down: dict[str, str] = {}  # variant -> why it cannot serve (its bundle did not load)
        self.store_away: str | None = None  # why the experiment store cannot answer now
        self._init_metrics()
        self.records = RecordBuffer(lambda rows: self._store("ingest", rows), self._refresh)
        self.capture = (
            Capture(StateDir(app.state_uri).child("capture"), self.cfg.model, self.cfg.capture)
            if self.cfg.capture.enabled else None
        )  # fmt: skip
        self.shadows = ShadowMirror(
            lambda name, instances: self._call(name, "predict", instances),
            self.records.add,
            lambda name, outcome: self.m_shadow.inc(
                tags={"model": self.cfg.model, "variant": name, "outcome": outcome}
            ),
            list(self.versions),
            on_answer=self._capture_shadow,
        )

    def _init_metrics(self) -> None:
        import ray

        if not ray.is_initialized():  # a plain object (unit tests): metrics go nowhere
            self.m_requests = self.m_latency = self.m_shadow = self.m_weight = _NoMetric()
            return
        from ray.serve import metrics

        # Ray types tag_keys as tuple[str]; any tuple of names is accepted.
        deployment_tags: Any = ("model", "variant")
        status_tags: Any = ("model", "variant", "status")
        shadow_tags: Any = ("model", "variant", "outcome")

        self.m_requests = metrics.Counter(
            "shipyard_requests",
            description="Predict requests by variant and HTTP status.",
            tag_keys=status_tags,
        )
        self.m_latency = metrics.Histogram(
            "shipyard_request_latency_ms",
            description="Predict latency at the router, by variant (ms).",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
            tag_keys=deployment_tags,
        )
        self.m_shadow = metrics.Counter(
            "shipyard_shadow_requests",
            description="Mirrored requests by shadow variant and outcome.",
            tag_keys=shadow_tags,
        )
        self.m_weight = metrics.Gauge(
            "shipyard_variant_weight",
            description="Live traffic share of each variant (0-1).",
            tag_keys=deployment_tags,
        )

    # --- the HTTP app ---------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        return self.build_app()

    def build_app(self) -> Any:
        api = FastAPI(
            title="Shipyard",
            description="Several model versions behind one endpoint: weighted A/B traffic, "
            "sticky keys, shadows, guardrails, drift.",
            version="1",
        )
        install_error_handlers(
            api,
            {"/predict": PredictRequest, "/explain": PredictRequest, "/feedback": FeedbackRequest,
             "/variants": TrafficUpdate, "/retrain/{request_id}/{action}": Decision},
        )  # fmt: skip
        api.add_middleware(BodyGuard, max_bytes=self.cfg.limits.max_body_bytes)
        admin = [Depends(self.require_admin)]
        data = [Depends(self.require_api_key)]
        add = api.add_api_route
        add(
            "/predict",
            self.predict,
            methods=["POST"],
            response_model=PredictResponse,
            responses=DATA_ERRORS,
            dependencies=data,
            summary="Predict with the variant the key is routed to",
        )
        add(
            "/explain",
            self.explain,
            methods=["POST"],
            response_model=ExplainResponse,
            responses=DATA_ERRORS,
            dependencies=data,
            summary="Per-feature contributions for one record",
        )
        add(
            "/feedback",
            self.feedback,
            methods=["POST"],
            response_model=FeedbackResponse,
            responses=DATA_ERRORS,
            dependencies=data,
            summary="The outcome of an earlier prediction (A/B statistics)",
        )
        add("/ab", self.ab, methods=["GET"], dependencies=data, summary="The A/B report")
        add(
            "/variants",
            self.variants,
            methods=["GET"],
            dependencies=data,
            summary="Live variants and weights",
        )
        add(
            "/variants",
            self.put_variants,
            methods=["PUT"],
            response_model=TrafficState,
            responses=ADMIN_ERRORS,
            dependencies=admin,
            summary="Change weights (admin)",
        )
        add(
            "/variants/{name}/promote",
            self.promote,
            methods=["POST"],
            response_model=TrafficState,
            responses=ADMIN_ERRORS,
            dependencies=admin,
            summary="Make a variant the control with all live traffic (admin)",
        )
        add(
            "/variants/{name}/rollback",
            self.rollback,
            methods=["POST"],
            response_model=TrafficState,
            responses=ADMIN_ERRORS,
            dependencies=admin,
            summary="Take a variant's live traffic away (admin)",
        )
        add(
            "/drift",
            self.drift,
            methods=["GET"],
            dependencies=data,
            summary="Drift verdicts per variant",
        )
        add(
            "/drift/{variant}/report",
            self.drift_report,
            methods=["GET"],
            response_class=HTMLResponse,
            responses=DATA_ERRORS,
            dependencies=data,
            summary="Drift histograms (HTML)",
        )
        add(
            "/retrain",
            self.retrain_requests,
            methods=["GET"],
            dependencies=data,
            summary="Retraining requests",
        )
        add(
            "/retrain/{request_id}/{action}",
            self.retrain_decide,
            methods=["POST"],
            responses=ADMIN_ERRORS,
            dependencies=admin,
            summary="Approve or reject a retrained version (admin)",
        )
        add("/healthz", self.healthz, methods=["GET"], summary="Ready to route")
        return api  # fmt: skip

    async def require_admin(
        self, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        """Admin routes: off unless the token env is set; then a Bearer token must match."""
        if self._token is None:
            raise NotFound(
                f"admin routes are off: set {self.cfg.admin_token_env} on the serving nodes"
            )
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("admin route: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(creds.credentials.encode(), self._token.encode()):
            raise Forbidden("admin route: wrong token")

    async def require_api_key(self, key: Annotated[str | None, Depends(api_key)]) -> None:
        """Data routes: open unless API keys are set; then X-API-Key must be one of them."""
        if not self._api_keys:
            return
        if not key:
            raise Unauthorized(f"send an API key as the X-API-Key header ({self.cfg.api_keys_env})")
        given = key.encode()
        if not any([hmac.compare_digest(given, k) for k in self._api_keys]):  # no early exit
            raise Forbidden("X-API-Key: not a valid API key")

    # --- configuration --------------------------------------------------------------------------
    async def reconfigure(self, traffic: dict[str, Any]) -> None:
        """user_config from `serve deploy`: applied by the store only if it changed since."""
        try:
            await self.store.apply_deploy.remote(traffic)
        except ShipyardError as err:
            raise ValueError(f"user_config rejected: {getattr(err, 'message', err)}") from None
        self._apply(await self.store.snapshot.remote())
        if not self._tasks:
            if self.capture is not None:
                self.capture.start()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self.records.run()),
                loop.create_task(self._poll_loop()),
                loop.create_task(self._health_loop()),
            ]

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
            self.m_weight.set(share, tags={"model": self.cfg.model, "variant": name})

    async def _refresh(self) -> None:
        self._apply(await self.store.snapshot.remote())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            await self.check_store()

    async def check_store(self) -> None:
        """Ask the store for its config version (and fetch the table if it changed). One that
        does not answer within limits.probe_timeout_s is marked away: routes that need it answer
        503 at once until it answers again, and routing goes on from the local table."""
        try:
            response = self.store.config_version.remote()
            version = await self._within(response, self.cfg.limits.probe_timeout_s, "store")
            if version != self.snapshot.get("config_version"):
                await self._refresh()
        except Exception as err:  # the store restarts by itself; keep routing meanwhile
            if self.store_away is None:
                logger.warning("experiment store unreachable: %s", err)
            self.store_away = "not answering (restarting?)"
            return
        if self.store_away is not None:
            logger.warning("experiment store is back")
        self.store_away = None

    @staticmethod
    async def _within(
        response: Any, timeout_s: float, what: str, late: type[ShipyardError] = Unavailable
    ) -> Any:
        """Await a handle's response for at most `timeout_s`; past it the call is cancelled (a
        call still queued for a replica that is being replaced never runs) and `late` raised."""
        try:
            return await asyncio.wait_for(_awaitable(response), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise late(f"the {what} did not answer within {timeout_s:g} s") from None

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def check_health(self) -> None:
        """Ask every variant whether it has loaded its bundle: one that says no is taken out of
        routing (with its reason) until it says yes. One that does not answer in time keeps its
        place: Serve restarts dead replicas, and a busy one is not a broken one."""
        names = list(self.versions)
        probe = self.cfg.limits.probe_timeout_s
        answers = await asyncio.gather(
            *[self._within(self.models[n].info.remote(), probe, "variant") for n in names],
            return_exceptions=True,
        )
        for name, info in zip(names, answers, strict=True):
            if isinstance(info, BaseException):
                continue
            if self.capture is not None and info.get("feature_kinds"):
                self.capture.set_features(info["feature_kinds"])
            if info.get("loaded", True):
                if self.down.pop(name, None) is not None:
                    logger.warning("variant %s loaded: back in routing", name)
            elif name not in self.down:
                self.down[name] = f"variant {name!r} has not loaded: {info.get('error')}"
                logger.warning("%s: out of routing", self.down[name])

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

    async def _call(self, variant: str, method: str, arg: Any) -> Any:
        """Call a variant; a timeout is UpstreamTimeout, a failure the variant caused is
        Unavailable, and the variant's own typed errors (a record it refused) pass through."""
        response = getattr(self.models[variant], method).remote(arg)
        try:
            what = f"model of variant {variant!r}"
            return await self._within(response, self.cfg.limits.timeout_s, what, UpstreamTimeout)
        except ShipyardError:
            raise
        except Exception as err:
            logger.warning("variant %s failed: %s", variant, err)
            raise Unavailable(f"variant {variant!r}: model failed") from None

    async def _store(self, method: str, *args: Any) -> Any:
        """Call the experiment store; away or unreachable is a 503 for this request (at once
        while it is known to be away), never a 500 and never a long wait. Reads (report,
        snapshot) get limits.probe_timeout_s; writes (SLOW_STORE_CALLS: the journal, registry
        aliases) get limits.timeout_s."""
        if self.store_away is not None:
            raise Unavailable(f"experiment store unavailable ({self.store_away}); retry shortly")
        limits = self.cfg.limits
        timeout_s = limits.timeout_s if method in SLOW_STORE_CALLS else limits.probe_timeout_s
        try:
            response = getattr(self.store, method).remote(*args)
            if method not in SLOW_STORE_CALLS:
                return await self._within(response, timeout_s, "experiment store")
            # A write may take a while; but once the probe finds the store away (its replica
            # died with this call queued for it), the caller is answered 503 at once.
            call = asyncio.ensure_future(self._within(response, timeout_s, "experiment store"))
            watch = asyncio.ensure_future(self._until_store_away())
            done, _ = await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            if call not in done:
                call.cancel()
                response.cancel()
                raise Unavailable(
                    f"experiment store unavailable ({self.store_away}); retry shortly"
                )
            return call.result()
        except StorageError:  # the store is up; storage refused a write: nothing was changed
            raise
        except Unavailable:
            self.store_away = "not answering (restarting?)"
            raise Unavailable("experiment store unavailable; retry shortly") from None
        except ShipyardError:
            raise
        except Exception as err:
            logger.warning("experiment store call %s failed: %s", method, err)
            self.store_away = "call failed (restarting?)"
            raise Unavailable("experiment store unavailable; retry shortly") from None

    async def _until_store_away(self) -> None:
        while self.store_away is None:
            await asyncio.sleep(0.1)

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
        """Answer with the variant the key is routed to. What a failure counts against is
        decided here, and only a variant's own failure counts against it:

        - a record the variant refuses (4xx) is the client's mistake: counted as rejected;
        - a treatment that fails (5xx) is asked nothing more; control answers the same records.
          If control answers, the failure was the treatment's (counted; the client gets
          control's answer). If control fails too, the records fail every model: counted as an
          input failure, against no variant, and the client gets control's error;
        - a variant that has not loaded its bundle is out of routing: control answers its keys
          and they are counted as rerouted.
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
            fallback = ab and variant != control and control in self.models
            try:
                if fallback and variant in self.down:
                    raise NotLoaded(self.down[variant])
                out = await self._call(variant, "predict", instances)
            except Unavailable as err:  # NotLoaded included
                if not fallback:
                    self._count(record, status_of(err), t0)
                    raise self._tag(err, variant, rid) from None
                if isinstance(err, NotLoaded):
                    self.down[variant] = err.message
                    record["rerouted"] = True
                served = str(control)
                try:
                    out = await self._call(served, "predict", instances)
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
        self.m_requests.inc(tags={**tags, "status": str(status)})
        if status == 200:
            self.m_latency.observe(latency_ms, tags=tags)

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
        if ab and variant in self.down and self.snapshot.get("control") in self.models:
            variant = str(self.snapshot["control"])  # out of routing: control explains its keys
        out = await self._call(variant, "explain", instances[0])
        return JSONResponse(
            {**out, "variant": variant, "model_version": str(self.versions[variant])}
        )

    async def feedback(self, body: FeedbackRequest) -> JSONResponse:
        outcome = float(body.outcome)
        await self.records.flush()  # the request it refers to may still be in the buffer
        ok = await self._store("feedback", body.request_id, outcome)
        if self.capture is not None:
            self.capture.add_feedback(body.request_id, outcome, ok["joined"], ok.get("variant"))
        if ok["joined"] and self.cfg.performance.outcome_is_label and ok["variant"] in self.drifts:
            self._tell_drift(ok["variant"], ok["prediction"], outcome)
        return JSONResponse(ok, status_code=200 if ok["joined"] else 202)

    def _tell_drift(self, variant: str, prediction: Any, outcome: float) -> None:
        """Performance drift: the labelled prediction goes to the variant's drift actor, off the
        request path (a slow or dead actor loses the pair, never the /feedback answer)."""
        if prediction is not None:
            self._spawn(_awaitable(self.drifts[variant].outcome.remote(float(prediction), outcome)))

    async def ab(self) -> JSONResponse:
        await self.records.flush()
        report = await self._store("report")
        report["router"] = {
            "dropped_records": self.records.dropped,
            "capture": self.capture.stats() if self.capture is not None else {"enabled": False},
        }
        return JSONResponse(report)

    async def variants(self) -> JSONResponse:
        snap = self.snapshot
        if self.allocation is None:
            raise Unavailable("the router has no traffic table yet; retry shortly")
        shares = self.allocation.shares()
        probe = self.cfg.limits.probe_timeout_s
        infos = await asyncio.gather(
            *[self._within(self.models[n].info.remote(), probe, "variant") for n in self.versions],
            return_exceptions=True,
        )
        replicas = _replica_counts()
        out = [
            {
                "variant": name,
                "model_version": self.versions[name],
                "weight": snap["weights"].get(name, 0.0),
                "traffic_share": shares.get(name, 0.0),
                "shadow": snap["shadow"].get(name, 0.0),
                "control": name == snap["control"],
                "replicas": replicas.get(f"variant-{name}"),
                "loaded_at": None if isinstance(info, BaseException) else info["loaded_at"],
                "healthy": not isinstance(info, BaseException) and info.get("loaded", True),
                "error": _health_error(info),
                "routed": name not in self.down,
            }
            for name, info in zip(self.versions, infos, strict=True)
        ]
        return JSONResponse(
            {
                "model": self.cfg.model,
                "config_version": snap["config_version"],
                "control": snap["control"],
                "allocation": snap["allocation"],
                "variants": out,
            }
        )

    async def put_variants(self, body: TrafficUpdate) -> JSONResponse:
        return self._traffic(await self._store("set_traffic", body.model_dump(), "PUT /variants"))

    async def promote(self, name: str) -> JSONResponse:
        return self._traffic(await self._store("promote", name, "admin"))

    async def rollback(self, name: str) -> JSONResponse:
        reason = "rolled back by an operator"
        return self._traffic(await self._store("rollback", name, reason, "admin"))

    def _traffic(self, snapshot: dict[str, Any]) -> JSONResponse:
        self._apply(snapshot)
        return JSONResponse(
            {k: snapshot[k] for k in ("config_version", "weights", "shadow", "control")}
        )

    async def drift(self) -> JSONResponse:
        """Per variant: the last closed window's verdict per feature (score, p-value, drifted,
        window size, since when) and an overall `drifted`."""
        if not self.drifts:
            raise NotFound("drift actors are off (drift.enabled: false)")
        names = list(self.drifts)
        probe = self.cfg.limits.probe_timeout_s
        answers = await asyncio.gather(
            *[self._within(self.drifts[n].status.remote(), probe, "drift actor") for n in names],
            return_exceptions=True,
        )
        out: dict[str, Any] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                logger.warning("drift actor of %s unavailable: %s", name, answer)
                out[name] = {"available": False, "error": "drift actor unavailable (restarting?)"}
            else:
                out[name] = {"available": True, **answer}
        return JSONResponse({"model": self.cfg.model, "variants": out})

    async def drift_report(self, variant: str) -> HTMLResponse:
        """HTML: reference vs current histograms of the variant's drifted features."""
        from shipyard.monitoring.report import render_html

        if variant not in self.drifts:
            raise NotFound(
                f"no drift actor for variant {variant!r}; variants: {sorted(self.drifts)}"
            )
        try:
            response = self.drifts[variant].report_data.remote()
            data = await self._within(response, self.cfg.limits.timeout_s, "drift actor")
        except Exception as err:
            logger.warning("drift report of %s unavailable: %s", variant, err)
            raise Unavailable(f"drift actor of {variant!r} unavailable; retry shortly") from None
        return HTMLResponse(render_html(data))

    async def retrain_requests(self) -> JSONResponse:
        """Retraining requests (newest first) and the policy they follow."""
        if self.retrain is None:
            return JSONResponse({"model": self.cfg.model, "on_drift": "alert", "requests": []})
        probe = self.cfg.limits.probe_timeout_s
        return JSONResponse(await self._within(self.retrain.report.remote(), probe, "retrainer"))

    async def retrain_decide(
        self, request_id: str, action: str, body: Decision | None = None
    ) -> JSONResponse:
        """A person's decision on a retrained version: approve (it joins live traffic as a
        canary) or reject. Admin route."""
        if action not in ("approve", "reject"):
            raise NotFound(f"unknown action {action!r}; accepted: approve, reject")
        if self.retrain is None:
            raise NotFound("retraining is off (on_drift: alert)")
        decision = body or Decision()
        if action == "approve":
            answer = await _awaitable(self.retrain.approve.remote(request_id, decision.by))
        else:
            if not decision.reason:
                raise InvalidField("reason: say why the version is rejected")
            answer = await _awaitable(
                self.retrain.reject.remote(request_id, decision.by, decision.reason)
            )
        return JSONResponse(answer)

    async def healthz(self) -> dict[str, Any]:
        return {"ok": self.allocation is not None, "model": self.cfg.model}


class ServeRouter(Router):
    async def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully (a redeploy, a scale-down, a
        drained node): the answered requests still buffered go to the store first."""
        await self.stop()


Ingress = serve.ingress()(ServeRouter)
