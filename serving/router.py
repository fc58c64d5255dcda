"""The ingress: validates requests, routes them to a variant, mirrors shadows, streams statistics.

Routing decisions are local (a bucket table fetched from the experiment store), so the store is
never on a request's critical path: request records are buffered and flushed in batches, and a
slow or failing store or shadow never slows or fails a live request.
"""

# No `from __future__ import annotations`: FastAPI resolves route signatures at runtime.

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve

from shipyard.routing import Allocation, shadow_hit
from shipyard.serving_config import ServingConfig, TrafficUpdate

logger = logging.getLogger(__name__)

api = FastAPI(title="Shipyard", description="Several model versions, weighted A/B traffic.")

MAX_BUFFER = 200_000
MAX_SHADOW_IN_FLIGHT = 32
FLUSH_INTERVAL_S = 0.2
POLL_INTERVAL_S = 1.0


class ClientError(Exception):
    """A 4xx answer; `status` and `detail` go to the client as they are."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": detail, **extra}, status_code=status)


def _key_hash(key: str) -> str:
    """Keys are user identifiers: statistics and logs keep a hash, never the key."""
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


# Helpers live above the class: Serve's ingress serializes the class with the globals it sees.
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


@serve.ingress(api)
class Router:
    def __init__(
        self,
        config: dict[str, Any],
        versions: dict[str, int],
        models: dict[str, Any],
        store: Any,
        drifts: dict[str, Any] | None = None,
        retrain: Any = None,
    ) -> None:
        self.cfg = ServingConfig.model_validate(config)
        self.retrain = retrain
        self.versions = versions
        self.models = models
        self.store = store
        self.drifts = drifts or {}
        self.buffer: list[dict[str, Any]] = []
        self.dropped_records = 0
        self.shadow_in_flight = {name: 0 for name in versions}
        self.snapshot: dict[str, Any] = {"config_version": -1}
        self.allocation: Allocation | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._token = os.environ.get(self.cfg.admin_token_env) or None
        self._init_metrics()

    def _init_metrics(self) -> None:
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

    # --- configuration ------------------------------------------------------------------------
    async def reconfigure(self, traffic: dict[str, Any]) -> None:
        """user_config from `serve deploy`: applied by the store only if it changed since."""
        answer = await self.store.apply_deploy.remote(traffic)
        if "error" in answer:
            raise ValueError(f"user_config rejected: {answer['error']}")
        self._apply(await self.store.snapshot.remote())
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._flush_loop()),
                loop.create_task(self._poll_loop()),
            ]

    def _apply(self, snapshot: dict[str, Any]) -> None:
        if snapshot["config_version"] == self.snapshot.get("config_version"):
            return
        self.allocation = Allocation.from_json(snapshot["allocation"])
        self.snapshot = snapshot
        for name, share in self.allocation.shares().items():
            self.m_weight.set(share, tags={"model": self.cfg.model, "variant": name})

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                version = await self.store.config_version.remote()
                if version != self.snapshot.get("config_version"):
                    self._apply(await self.store.snapshot.remote())
            except Exception as err:  # the store restarts by itself; keep routing meanwhile
                logger.warning("experiment store unreachable: %s", err)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self._flush()

    async def _flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        try:
            actions = await self.store.ingest.remote(batch)
        except Exception as err:
            logger.warning("could not flush %d records (will retry): %s", len(batch), err)
            self.buffer = batch + self.buffer
            if len(self.buffer) > MAX_BUFFER:
                self.dropped_records += len(self.buffer) - MAX_BUFFER
                self.buffer = self.buffer[-MAX_BUFFER:]
            return
        if actions:
            self._apply(await self.store.snapshot.remote())

    # --- helpers ------------------------------------------------------------------------------
    async def _json_body(self, request: Request) -> Any:
        limit = self.cfg.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ClientError(
                413, f"request body is {declared} bytes; limits.max_body_bytes={limit}"
            )
        body = await request.body()
        if len(body) > limit:
            raise ClientError(
                413, f"request body is {len(body)} bytes; limits.max_body_bytes={limit}"
            )
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ClientError(400, f"request body is not valid JSON: {err}") from None

    def _admin(self, request: Request) -> None:
        if self._token is None:
            raise ClientError(
                404, f"admin routes are off: set {self.cfg.admin_token_env} on the serving nodes"
            )
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise ClientError(401, "admin route: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(auth[7:].strip().encode(), self._token.encode()):
            raise ClientError(403, "admin route: wrong token")

    def _route(self, key: str | None, explicit: str | None) -> tuple[str, bool]:
        if explicit is not None:
            if explicit not in self.versions:
                raise ClientError(
                    400,
                    f"header X-Shipyard-Variant: unknown variant {explicit!r}; "
                    f"variants: {sorted(self.versions)}",
                )
            return explicit, False
        assert self.allocation is not None
        return self.allocation.assign(key, self.snapshot["salt"]), True

    @staticmethod
    def _key(body: dict[str, Any], request: Request) -> str | None:
        key = body.get("key", request.headers.get("x-shipyard-key"))
        if key is None:
            return None
        if not isinstance(key, (str, int)) or isinstance(key, bool) or str(key) == "":
            raise ClientError(422, f"key must be a non-empty string, got {key!r}"[:200])
        return str(key)

    def _instances(self, body: Any) -> tuple[dict[str, Any], list[Any]]:
        if not isinstance(body, dict):
            raise ClientError(
                422,
                f"body must be an object with 'instances' (or 'instance'), got {type(body).__name__}",
            )
        unknown = sorted(set(body) - {"instances", "instance", "key"})
        if unknown:
            raise ClientError(
                422, f"unknown field(s) {unknown}; accepted: instances, instance, key"
            )
        if "instances" in body:
            instances = body["instances"]
            if isinstance(instances, dict):  # one record
                instances = [instances]
            if not isinstance(instances, list) or not instances:
                raise ClientError(422, "instances must be a non-empty list of records")
        elif "instance" in body:
            instances = [body["instance"]]
        else:
            raise ClientError(422, "missing field 'instances' (a list of records) or 'instance'")
        limit = self.cfg.limits.max_instances
        if len(instances) > limit:
            raise ClientError(
                413, f"{len(instances)} instances in one request; limits.max_instances={limit}"
            )
        return body, instances

    async def _call(self, variant: str, method: str, arg: Any) -> Any:
        response = getattr(self.models[variant], method).remote(arg)
        try:
            return await asyncio.wait_for(_awaitable(response), self.cfg.limits.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise

    async def _store(self, method: str, *args: Any) -> Any:
        """Call the experiment store; unreachable is a 503 for this request, never a 500."""
        try:
            return await getattr(self.store, method).remote(*args)
        except Exception as err:
            logger.warning("experiment store call %s failed: %s", method, err)
            raise ClientError(503, "experiment store unavailable; retry shortly") from None

    def _record(self, **fields: Any) -> None:
        self.buffer.append({"t": "req", "ts": time.time(), **fields})

    # --- routes -------------------------------------------------------------------------------
    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            body, instances = self._instances(await self._json_body(request))
            key = self._key(body, request)
            variant, ab = self._route(key, request.headers.get("x-shipyard-variant"))
        except ClientError as err:
            return _error(err.status, err.detail)
        rid = uuid.uuid4().hex
        version = self.versions[variant]
        key_hash = _key_hash(key) if key is not None else None
        tags = {"model": self.cfg.model, "variant": variant}
        try:
            out = await self._call(variant, "predict", instances)
        except asyncio.TimeoutError:
            return self._failed(rid, variant, version, ab, key_hash, t0, 504, "model timed out")
        except Exception as err:
            logger.warning("variant %s failed: %s", variant, err)
            return self._failed(rid, variant, version, ab, key_hash, t0, 503, "model failed")
        latency_ms = (time.perf_counter() - t0) * 1e3
        if "error" in out:
            self._record(id=rid, variant=variant, version=version, ab=ab, status=out["status"])
            self.m_requests.inc(tags={**tags, "status": str(out["status"])})
            return _error(out["status"], out["error"], variant=variant, request_id=rid)
        score = out.pop("score")
        self._record(
            id=rid,
            variant=variant,
            version=version,
            ab=ab,
            status=200,
            latency_ms=latency_ms,
            pred=sum(score) / len(score),
            key=key_hash,
        )
        self.m_requests.inc(tags={**tags, "status": "200"})
        self.m_latency.observe(latency_ms, tags=tags)
        if ab:
            for name, share in self.snapshot["shadow"].items():
                if shadow_hit(key, name, share, self.snapshot["salt"]):
                    self._mirror(name, instances, out)
        return JSONResponse(
            {**out, "variant": variant, "model_version": str(version), "request_id": rid},
            headers={"X-Request-Id": rid},
        )

    def _failed(
        self, rid: str, variant: str, version: int, ab: bool, key: str | None, t0: float,
        status: int, detail: str,
    ) -> JSONResponse:  # fmt: skip
        latency_ms = (time.perf_counter() - t0) * 1e3
        self._record(
            id=rid, variant=variant, version=version, ab=ab, status=status,
            latency_ms=latency_ms, key=key,
        )  # fmt: skip
        self.m_requests.inc(
            tags={"model": self.cfg.model, "variant": variant, "status": str(status)}
        )
        return _error(status, f"variant {variant!r}: {detail}", variant=variant, request_id=rid)

    def _mirror(self, name: str, instances: list[Any], live: dict[str, Any]) -> None:
        """Send a copy to a shadow variant in the background; never awaited by the live request."""
        tags = {"model": self.cfg.model, "variant": name}
        if self.shadow_in_flight[name] >= MAX_SHADOW_IN_FLIGHT:
            self.buffer.append({"t": "shadow", "variant": name, "dropped": True})
            self.m_shadow.inc(tags={**tags, "outcome": "dropped"})
            return
        self.shadow_in_flight[name] += 1

        async def run() -> None:
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"t": "shadow", "variant": name}
            try:
                out = await self._call(name, "predict", instances)
                rec["latency_ms"] = (time.perf_counter() - t0) * 1e3
                if "error" in out:
                    rec["ok"] = False
                else:
                    rec["ok"] = True
                    live_p, shadow_p = live["predictions"], out["predictions"]
                    rec["agree"] = sum(a == b for a, b in zip(live_p, shadow_p)) / len(live_p)
                    if "probabilities" in live and isinstance(live["probabilities"][0], float):
                        a, b = live["probabilities"], out["probabilities"]
                    elif isinstance(live_p[0], (int, float)) and not isinstance(live_p[0], bool):
                        a, b = live_p, shadow_p
                    else:
                        a = b = []
                    if a:
                        rec["abs_diff"] = sum(abs(x - y) for x, y in zip(a, b)) / len(a)
            except Exception as err:
                rec["ok"] = False
                logger.info("shadow %s failed: %s", name, err)
            finally:
                self.shadow_in_flight[name] -= 1
            self.buffer.append(rec)
            self.m_shadow.inc(tags={**tags, "outcome": "ok" if rec.get("ok") else "error"})

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @api.post("/explain")
    async def explain(self, request: Request) -> JSONResponse:
        try:
            body, instances = self._instances(await self._json_body(request))
            if len(instances) != 1:
                raise ClientError(422, f"explain takes one record, got {len(instances)}")
            variant, _ = self._route(
                self._key(body, request), request.headers.get("x-shipyard-variant")
            )
        except ClientError as err:
            return _error(err.status, err.detail)
        try:
            out = await self._call(variant, "explain", instances[0])
        except asyncio.TimeoutError:
            return _error(504, f"variant {variant!r}: model timed out")
        except Exception as err:
            logger.warning("explain on variant %s failed: %s", variant, err)
            return _error(503, f"variant {variant!r}: model failed")
        if "error" in out:
            return _error(out["status"], out["error"], variant=variant)
        return JSONResponse(
            {**out, "variant": variant, "model_version": str(self.versions[variant])}
        )

    @api.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        try:
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise ClientError(422, "body must be an object with request_id and outcome")
            unknown = sorted(set(body) - {"request_id", "outcome"})
            if unknown:
                raise ClientError(422, f"unknown field(s) {unknown}; accepted: request_id, outcome")
            rid, outcome = body.get("request_id"), body.get("outcome")
            if not isinstance(rid, str) or not rid:
                raise ClientError(422, "request_id must be the request_id a /predict returned")
            if isinstance(outcome, bool):
                outcome = int(outcome)
            if not isinstance(outcome, (int, float)) or outcome != outcome:
                raise ClientError(
                    422, f"outcome must be a number (or true/false), got {outcome!r}"[:200]
                )
            await self._flush()  # the request it refers to may still be in this router's buffer
            answer = await self._store("feedback", rid, float(outcome))
        except ClientError as err:
            return _error(err.status, err.detail)
        if "error" in answer:
            return _error(answer["status"], answer["error"])
        ok = answer["ok"]
        if ok["joined"] and self.cfg.performance.outcome_is_label and ok["variant"] in self.drifts:
            self._tell_drift(ok["variant"], ok["prediction"], float(outcome))
        return JSONResponse(ok, status_code=200 if ok["joined"] else 202)

    def _tell_drift(self, variant: str, prediction: Any, outcome: float) -> None:
        """Performance drift: the labelled prediction goes to the variant's drift actor, off the
        request path (a slow or dead actor loses the pair, never the /feedback answer)."""
        if prediction is None:
            return
        task = asyncio.get_running_loop().create_task(
            _awaitable(self.drifts[variant].outcome.remote(float(prediction), outcome))
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    @api.get("/ab")
    async def ab(self) -> JSONResponse:
        await self._flush()
        try:
            report = await self._store("report")
        except ClientError as err:
            return _error(err.status, err.detail)
        report["router"] = {"dropped_records": self.dropped_records}
        return JSONResponse(report)

    @api.get("/variants")
    async def variants(self) -> JSONResponse:
        snap = self.snapshot
        assert self.allocation is not None
        shares = self.allocation.shares()
        infos = await asyncio.gather(
            *[_awaitable(self.models[n].info.remote()) for n in self.versions],
            return_exceptions=True,
        )
        replicas = _replica_counts()
        out = []
        for name, info in zip(self.versions, infos):
            out.append(
                {
                    "variant": name,
                    "model_version": self.versions[name],
                    "weight": snap["weights"].get(name, 0.0),
                    "traffic_share": shares.get(name, 0.0),
                    "shadow": snap["shadow"].get(name, 0.0),
                    "control": name == snap["control"],
                    "replicas": replicas.get(f"variant-{name}"),
                    "loaded_at": None if isinstance(info, BaseException) else info["loaded_at"],
                    "healthy": not isinstance(info, BaseException),
                }
            )
        return JSONResponse(
            {
                "model": self.cfg.model,
                "config_version": snap["config_version"],
                "control": snap["control"],
                "allocation": snap["allocation"],
                "variants": out,
            }
        )

    @api.put("/variants")
    async def put_variants(self, request: Request) -> JSONResponse:
        try:
            self._admin(request)
            body = await self._json_body(request)
            try:
                update = TrafficUpdate.model_validate(body)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "body"
                raise ClientError(422, f"{where}: {first['msg']}") from None
            answer = await self._store("set_traffic", update.model_dump(), "PUT /variants")
        except ClientError as err:
            return _error(err.status, err.detail)
        return await self._admin_answer(answer)

    @api.post("/variants/{name}/promote")
    async def promote(self, name: str, request: Request) -> JSONResponse:
        try:
            self._admin(request)
            answer = await self._store("promote", name, "admin")
        except ClientError as err:
            return _error(err.status, err.detail)
        return await self._admin_answer(answer)

    @api.post("/variants/{name}/rollback")
    async def rollback(self, name: str, request: Request) -> JSONResponse:
        try:
            self._admin(request)
            answer = await self._store("rollback", name, "rolled back by an operator", "admin")
        except ClientError as err:
            return _error(err.status, err.detail)
        return await self._admin_answer(answer)

    async def _admin_answer(self, answer: dict[str, Any]) -> JSONResponse:
        if "error" in answer:
            return _error(answer["status"], answer["error"])
        self._apply(answer["ok"])
        return JSONResponse(
            {
                "config_version": answer["ok"]["config_version"],
                "weights": answer["ok"]["weights"],
                "shadow": answer["ok"]["shadow"],
                "control": answer["ok"]["control"],
            }
        )

    @api.get("/drift")
    async def drift(self) -> JSONResponse:
        """Per variant: the last closed window's verdict per feature (score, p-value, drifted,
        window size, since when) and an overall `drifted`."""
        if not self.drifts:
            return _error(404, "drift actors are off (drift.enabled: false)")
        names = list(self.drifts)
        answers = await asyncio.gather(
            *[_awaitable(self.drifts[n].status.remote()) for n in names], return_exceptions=True
        )
        out: dict[str, Any] = {}
        for name, answer in zip(names, answers):
            if isinstance(answer, BaseException):
                logger.warning("drift actor of %s unavailable: %s", name, answer)
                out[name] = {"available": False, "error": "drift actor unavailable (restarting?)"}
            else:
                out[name] = {"available": True, **answer}
        return JSONResponse({"model": self.cfg.model, "variants": out})

    @api.get("/drift/{variant}/report")
    async def drift_report(self, variant: str) -> Any:
        """HTML: reference vs current histograms of the variant's drifted features."""
        from fastapi.responses import HTMLResponse

        from shipyard.drift_report import render_html

        if variant not in self.drifts:
            return _error(
                404, f"no drift actor for variant {variant!r}; variants: {sorted(self.drifts)}"
            )
        try:
            data = await asyncio.wait_for(
                _awaitable(self.drifts[variant].report_data.remote()), self.cfg.limits.timeout_s
            )
        except Exception as err:
            logger.warning("drift report of %s unavailable: %s", variant, err)
            return _error(503, f"drift actor of {variant!r} unavailable; retry shortly")
        return HTMLResponse(render_html(data))

    @api.get("/retrain")
    async def retrain_requests(self) -> JSONResponse:
        """Retraining requests (newest first) and the policy they follow."""
        if self.retrain is None:
            return JSONResponse({"model": self.cfg.model, "on_drift": "alert", "requests": []})
        return JSONResponse(await _awaitable(self.retrain.report.remote()))

    @api.post("/retrain/{request_id}/{action}")
    async def retrain_decide(self, request_id: str, action: str, request: Request) -> JSONResponse:
        """A person's decision on a retrained version: approve (it joins live traffic as a
        canary) or reject. Admin route."""
        try:
            self._admin(request)
            if action not in ("approve", "reject"):
                raise ClientError(404, f"unknown action {action!r}; accepted: approve, reject")
            if self.retrain is None:
                raise ClientError(404, "retraining is off (on_drift: alert)")
            raw = await request.body()
            body = await self._json_body(request) if raw.strip() else {}
            if not isinstance(body, dict) or set(body) - {"by", "reason"}:
                raise ClientError(422, "body: an object with optional 'by' and 'reason' strings")
            by, reason = body.get("by", "admin"), body.get("reason", "")
            if not isinstance(by, str) or not by or not isinstance(reason, str):
                raise ClientError(422, "by and reason must be strings (by non-empty)")
            if action == "reject" and not reason:
                raise ClientError(422, "reason: say why the version is rejected")
            method = self.retrain.approve if action == "approve" else self.retrain.reject
            args = (request_id, by) if action == "approve" else (request_id, by, reason)
            answer = await _awaitable(method.remote(*args))
        except ClientError as err:
            return _error(err.status, err.detail)
        if "error" in answer:
            return _error(answer["status"], answer["error"])
        return JSONResponse(answer["ok"])

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"ok": self.allocation is not None, "model": self.cfg.model}
