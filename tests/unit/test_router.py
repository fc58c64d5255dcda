"""The router's HTTP app without Ray: the edge's one error mapping, body limits, admin auth and
the OpenAPI document, over FastAPI's test client. The store is the real experiment store; the
variants and the handles are stand-ins that behave as Serve handles do (awaitable, cancellable,
typed errors raised as themselves)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.edge import STATUS, status_of
from serving.router import Router
from serving.settings import AppSettings
from serving.store import ExperimentStore
from shipyard.config.serving import ServingConfig
from shipyard.errors import InvalidRecord, ShipyardError

TOKEN = "unit-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Method:
    """`handle.method.remote(*args)` -> an awaitable, cancellable response (a task)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        async def run() -> Any:
            out = self.fn(*args)
            return await out if inspect.isawaitable(out) else out

        return asyncio.get_running_loop().create_task(run())


class Handle:
    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Method:
        return Method(getattr(self.target, name))


class Model:
    """A variant: P(positive) = x / 10; a record without a number `x` is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        for i, r in enumerate(instances):
            if not isinstance(r.get("x"), int | float) or isinstance(r.get("x"), bool):
                raise InvalidRecord(f"instances[{i}].x: expected a number", "x")
        p = [float(r["x"]) / 10 for r in instances]
        return {"predictions": [int(v >= 0.5) for v in p], "probabilities": p, "score": p}

    def info(self) -> dict[str, Any]:
        return {"loaded_at": 1.0}


class Aliases:
    def __init__(self) -> None:
        self.table: dict[str, int] = {}

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.table)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.table[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self.table.pop(alias, None)


def router_over(
    tmp: Path, drifts: dict[str, Any] | None = None, treatment: Model | None = None
) -> Router:
    cfg = ServingConfig.model_validate(
        {"model": "m", "limits": {"max_body_bytes": 2048, "max_instances": 5, "probe_timeout_s": 0.2,
                                  "fallback_after_s": 0.3},
         "variants": [{"name": "control", "version": 1, "weight": 50},
                      {"name": "treatment", "version": 2, "weight": 50}]}
    )  # fmt: skip
    versions = {"control": 1, "treatment": 2}
    app = AppSettings(config=cfg, versions=versions, state_uri=str(tmp), review_dir=str(tmp),
                      events_path=str(tmp / "events.jsonl"))  # fmt: skip
    store = ExperimentStore(app, aliases=Aliases())
    models = {
        "control": Handle(Model("control")),
        "treatment": Handle(treatment or Model("treatment")),
    }
    return Router(app, models, Handle(store), drifts=drifts)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", TOKEN)
    router = router_over(tmp_path)
    cfg = router.cfg
    with TestClient(router.build_app()) as c:
        asyncio.run(router.reconfigure(cfg.traffic()))  # what Serve does with user_config
        for task in router._tasks:  # the loops belong to that (finished) event loop
            task.cancel()
        yield c


def test_predict_and_feedback_round_trip(client: TestClient) -> None:
    r = client.post("/predict", json={"instances": [{"x": 7}], "key": "user-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["probabilities"] == [0.7] and body["variant"] in ("control", "treatment")
    fb = client.post("/feedback", json={"request_id": body["request_id"], "outcome": True})
    assert fb.status_code == 200 and fb.json()["joined"], fb.text
    again = client.post("/feedback", json={"request_id": body["request_id"], "outcome": 0})
    assert again.status_code == 409 and body["request_id"] in again.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "status", "names"),
    [
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"{nope"}, 400, "not valid JSON"),  # no Content-Type: read as JSON
        ({"content": b'{"instance": {"x": 1}}', "headers": {"content-type": "text/plain"}}, 415, "application/json"),
        ({"data": {"instance": "x"}}, 415, "application/json"),  # a form, as a browser posts it
        ({"json": [1, 2]}, 422, "instances"),
        ({"json": {"key": "a"}}, 422, "instances"),
        ({"json": {"instances": []}}, 422, "non-empty"),
        ({"json": {"instances": [{"x": 1}], "extra": 1}}, 422, "extra"),
        ({"json": {"instances": [3]}}, 422, "instances"),
        ({"json": {"instances": [{"x": "a"}]}}, 422, "instances[0].x"),
        ({"json": {"instances": [{"x": 1}] * 6}}, 413, "max_instances"),
        ({"json": {"instance": {"x": 1}}, "headers": {"X-Shipyard-Variant": "no"}}, 400, "X-Shipyard-Variant"),
        ({"content": b"{" + b" " * 3000 + b"}", "headers": {"content-type": "application/json"}}, 413, "max_body_bytes"),
    ],
    ids=["not json", "no content type", "text/plain", "form", "not an object", "no instances", "empty", "unknown field", "record not an object",
         "record refused by the model", "too many", "unknown variant", "oversized"],
)  # fmt: skip
def test_client_mistakes_are_4xx_naming_the_field(
    client: TestClient, kwargs: dict[str, Any], status: int, names: str
) -> None:
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert names in r.json()["error"], r.text


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole(
    client: TestClient,
) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 100 KB offered, 2 KB allowed
            sent.append(1)
            yield b" " * 1024

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
    assert "content-length" not in r.request.headers  # it really went chunked


def test_admin_routes_need_the_token(client: TestClient) -> None:
    body = {"weights": {"treatment": 20}}
    assert client.put("/variants", json=body).status_code == 401
    wrong = client.put("/variants", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = client.put("/variants", json=body, headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["weights"]["treatment"] == 20
    bad = client.put("/variants", json={"weights": {"treatment": -1}}, headers=ADMIN)
    assert bad.status_code == 422 and "weights.treatment" in bad.json()["error"]
    unknown = client.put("/variants", json={"weights": {"nope": 1}}, headers=ADMIN)
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
    missing = client.post("/variants/nope/promote", headers=ADMIN)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


class Hung(Model):
    """A variant on a node that stopped answering: calls wait until Ray declares it dead."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.hung = True

    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:  # type: ignore[override]
        while self.hung:
            await asyncio.sleep(0.05)
        return super().predict(instances)

    async def info(self) -> dict[str, Any]:  # type: ignore[override]
        while self.hung:
            await asyncio.sleep(0.05)
        return super().info()


def test_a_treatment_that_stops_answering_costs_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past limits.fallback_after_s (0.3 s here, not timeout_s's 10 s) control answers, the
    request counts as the treatment's failure, and the treatment leaves routing (its keys go to
    control, counted as rerouted) until it answers the health probe again."""
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", TOKEN)
    treatment = Hung("treatment")
    router = router_over(tmp_path, treatment=treatment)
    with TestClient(router.build_app()) as c:
        asyncio.run(router.reconfigure(router.cfg.traffic()))
        for task in router._tasks:
            task.cancel()
        answers = [
            c.post("/predict", json={"instance": {"x": 4}, "key": f"user-{i}"}) for i in range(12)
        ]
        assert [r.status_code for r in answers] == [200] * 12
        bodies = [r.json() for r in answers]
        assert all(b["variant"] == "control" for b in bodies)
        given_up = [b for b in bodies if b.get("routed_to") == "treatment"]
        assert given_up, "no key was routed to the treatment"
        listed = {v["variant"]: v for v in c.get("/variants").json()["variants"]}
        assert listed["treatment"]["routed"] is False
        c.portal.call(router.records.flush)  # type: ignore[union-attr]
        ab = c.get("/ab").json()["variants"]["treatment"]
        assert ab["errors"] == 1 and ab["rerouted"] == len(given_up) - 1  # given up on once
        treatment.hung = False
        c.portal.call(router.check_health)  # type: ignore[union-attr]
        assert c.get("/variants").json()["variants"][1]["routed"] is True
        back = [
            c.post("/predict", json={"instance": {"x": 4}, "key": f"user-{i}"}).json()
            for i in range(12)
        ]
        assert {b["variant"] for b in back} == {"control", "treatment"}


class SilentDrift:
    """A drift actor that does not answer within the probe (restarting, or its node lost)."""

    async def status(self) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}


def test_a_route_that_fails_answers_with_the_status_of_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a 200 that hides a failure: a router with no traffic table yet is not healthy (503),
    a drift listing no actor answers is a 503, and while retraining is off every /retrain route
    answers the 404 an unknown request id gets, saying why."""
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", TOKEN)
    router = router_over(
        tmp_path, drifts={n: Handle(SilentDrift()) for n in ("control", "treatment")}
    )
    with TestClient(router.build_app()) as c:
        waiting = c.get("/healthz")
        assert waiting.status_code == 503 and "traffic table" in waiting.json()["error"]
        asyncio.run(router.reconfigure(router.cfg.traffic()))
        for task in router._tasks:
            task.cancel()
        assert c.get("/healthz").json() == {"ok": True, "model": "m"}
        silent = c.get("/drift")
        assert silent.status_code == 503 and "probe_timeout_s" in silent.json()["error"]
        for method, path in (("GET", "/retrain"), ("POST", "/retrain/3f9c2a1b/approve")):
            off = c.request(method, path, json={"by": "me"}, headers=ADMIN)
            assert off.status_code == 404 and "retraining is off" in off.json()["error"], path
        odd = c.post("/retrain/3f9c2a1b/frobnicate", json={}, headers=ADMIN)
        assert odd.status_code == 404 and "approve, reject" in odd.json()["error"]


def test_openapi_describes_every_request_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()

    def body_schema(path: str, method: str) -> dict[str, Any]:
        op = doc["paths"][path][method]
        schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
        return schema

    for path, method in [("/predict", "post"), ("/explain", "post"), ("/feedback", "post"),
                         ("/variants", "put"), ("/retrain/{request_id}/{action}", "post")]:  # fmt: skip
        assert body_schema(path, method), (path, method)
    predict = doc["components"]["schemas"]["PredictRequest"]["properties"]
    assert {"instances", "instance", "key"} <= set(predict)
    assert "200" in doc["paths"]["/predict"]["post"]["responses"]
    assert "422" in doc["paths"]["/predict"]["post"]["responses"]
    admin = doc["paths"]["/variants"]["put"]
    assert admin.get("security") and "401" in admin["responses"]


def test_every_error_class_has_one_status() -> None:
    import shipyard.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type)
               and issubclass(c, ShipyardError) and c is not ShipyardError]  # fmt: skip
    for cls in classes:  # every error the server raises on purpose maps somewhere known
        assert status_of(cls("x")) in {s for _, s in STATUS}, cls
    assert status_of(InvalidRecord("x")) == 422 and status_of(RuntimeError("x")) == 500


def test_a_router_that_serve_stops_hands_its_buffer_to_the_store(tmp_path: Path) -> None:
    """What `__del__` does when Serve stops a router replica gracefully."""
    cfg = ServingConfig.model_validate(
        {"model": "m", "variants": [{"name": "control", "version": 1, "weight": 100}]}
    )
    app = AppSettings(config=cfg, versions={"control": 1}, state_uri=str(tmp_path / "s"),
                      review_dir=str(tmp_path), events_path=str(tmp_path / "ev.jsonl"))  # fmt: skip
    store = ExperimentStore(app, aliases=Aliases())
    router = Router(app, {"control": Handle(Model("control"))}, Handle(store))
    for i in range(3):
        router.records.add(id=f"r{i}", variant="control", version=1, status=200, pred=0.5)
    asyncio.run(router.stop())
    assert router.records.rows == [] and store.experiment.stats["control"].requests == 3
    again = ExperimentStore(app, aliases=Aliases())  # and they are on storage
    assert again.experiment.stats["control"].requests == 3


def test_a_flush_returns_once_the_rows_before_it_reached_the_store() -> None:
    """GET /ab and POST /feedback flush before they read or join: a row that another flush has
    already taken, and is still sending, must be at the store before they go on."""
    from serving.records import RecordBuffer

    sent: list[str] = []

    async def send(rows: list[dict[str, Any]]) -> list[Any]:
        await asyncio.sleep(0.05)
        sent.extend(r["id"] for r in rows)
        return []

    async def nothing() -> None:
        return None

    async def scenario() -> None:
        buffer = RecordBuffer(send, nothing)
        buffer.add(id="a")
        background = asyncio.ensure_future(buffer.flush())  # the periodic flush takes row a
        await asyncio.sleep(0)
        await buffer.flush()  # nothing left in the buffer, but a is still on its way
        assert sent == ["a"]
        await background

    asyncio.run(scenario())


def test_a_call_nothing_can_stand_in_for_is_sent_again_and_the_first_answer_wins() -> None:
    """Control's replica on a lost node hangs (Ray declares the node dead 10-15 s later): past
    limits.fallback_after_s the pool asks once more, and Serve sends that to a replica that
    answers; the hung call is cancelled. A replica that answers at once is asked once."""
    from serving.pool import VariantPool
    from shipyard.config.serving import Limits
    from shipyard.errors import UpstreamTimeout

    class Replicas:
        """Two replicas behind one handle: the first call lands on the dead one."""

        def __init__(self, dead_first: bool) -> None:
            self.calls, self.cancelled, self.dead_first = 0, 0, dead_first

        async def predict(self, instances: list[Any]) -> dict[str, Any]:
            self.calls += 1
            if self.dead_first and self.calls == 1:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return Model("control").predict(instances)

    async def scenario(replicas: Replicas, limits: Limits) -> tuple[Any, float]:
        pool = VariantPool({"control": Handle(replicas)}, limits)
        started = time.monotonic()
        try:
            out: Any = await pool.predict("control", [{"x": 7}])
        except UpstreamTimeout as err:
            out = err
        await asyncio.sleep(0.05)  # the cancelled call's cleanup
        return out, time.monotonic() - started

    limits = Limits(fallback_after_s=0.2, timeout_s=5)
    hung = Replicas(dead_first=True)
    out, took = asyncio.run(scenario(hung, limits))
    assert out["probabilities"] == [0.7] and 0.2 <= took < 2, (out, took)
    assert hung.calls == 2 and hung.cancelled == 1
    healthy = Replicas(dead_first=False)
    out, _ = asyncio.run(scenario(healthy, limits))
    assert out["probabilities"] == [0.7] and healthy.calls == 1

    class Dead(Replicas):
        async def predict(self, instances: list[Any]) -> dict[str, Any]:
            self.calls += 1
            await asyncio.sleep(60)
            return {}

    dead = Dead(dead_first=True)
    out, took = asyncio.run(scenario(dead, Limits(fallback_after_s=0.2, timeout_s=0.6)))
    assert isinstance(out, UpstreamTimeout) and "within 0.6 s" in out.message and took < 2
    assert dead.calls == 2
