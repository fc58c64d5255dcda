"""The hardened edge, without Ray: real variants (an ONNX graph and booster trained here) behind
the router's HTTP app and the real experiment store, driven as an attacker and a careless client
would. Every client mistake is a 4xx JSON answer naming the field; only a variant's own failure
counts against it; anonymous writes are bounded; a variant that cannot load is out of routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.model import VariantModel
from serving.router import Router
from serving.settings import AppSettings
from serving.store import ExperimentStore
from shipyard.bundle.graph import build_onnx
from shipyard.config.serving import ServingConfig
from shipyard.demo import datagen
from shipyard.errors import ArtifactError, NotLoaded
from tests.unit.test_onnx_model import make
from tests.unit.test_router import Aliases, Handle

TOKEN = "edge-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    schema, booster = make("binary")
    path = tmp_path_factory.mktemp("bundle")
    (path / "input_schema.json").write_text(schema.to_json())
    (path / "model.onnx").write_bytes(build_onnx(booster, schema).SerializeToString())
    booster.save_model(str(path / "booster.ubj"))
    return path


@pytest.fixture(scope="module")
def row(bundle: Path) -> dict[str, Any]:
    """One real record of the demo data, as a client sends it (JSON types, null for missing)."""
    names = [f["name"] for f in json.loads((bundle / "input_schema.json").read_text())["features"]]
    rec = datagen.generate(5, seed=1)[names].iloc[0].to_dict()
    return {str(k): None if v != v else (v.item() if hasattr(v, "item") else v)
            for k, v in rec.items()}  # fmt: skip


def _outside_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """@serve.batch asks the replica context for max_ongoing_requests; give it one."""
    from ray import serve

    context = types.SimpleNamespace(
        _deployment_config=types.SimpleNamespace(max_ongoing_requests=64)
    )
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


class App:
    """The router's HTTP app over real variants and the real experiment store."""

    def __init__(self, tmp: Path, bundle: Path, loaders: dict[str, Any] | None = None,
                 **config: Any) -> None:  # fmt: skip
        cfg = ServingConfig.model_validate(
            {"model": "m", "guardrails": {"min_requests": 50},
             "variants": [{"name": "control", "version": 1, "weight": 50},
                          {"name": "treatment", "version": 2, "weight": 50}], **config}
        )  # fmt: skip
        self.cfg = cfg
        versions = {"control": 1, "treatment": 2}
        settings = AppSettings(config=cfg, versions=versions, state_uri=str(tmp / "state"),
                               review_dir=str(tmp / "state"),
                               events_path=str(tmp / "events.jsonl"))  # fmt: skip
        self.settings = settings
        self.aliases = Aliases()
        self.aliases.table = {"champion": 1, "challenger": 2}
        self.store = ExperimentStore(settings, aliases=self.aliases)
        good = lambda model, version, uri: contextlib.nullcontext(bundle)  # noqa: E731
        self.variants = {n: VariantModel(settings, n, loader=(loaders or {}).get(n, good))
                         for n in versions}  # fmt: skip
        self.router = Router(settings, {n: Handle(v) for n, v in self.variants.items()},
                             Handle(self.store))  # fmt: skip
        self.portal: Any = None  # the running app's event loop, while a client is open

    @contextlib.contextmanager
    def client(self) -> Iterator[TestClient]:
        with TestClient(self.router.build_app(), raise_server_exceptions=False) as c:
            assert c.portal is not None
            c.portal.call(self.router.reconfigure, self.cfg.traffic())
            self.portal = c.portal
            try:
                yield c
            finally:
                self.portal = None

    def report(self) -> dict[str, Any]:
        """The store's report once every record the router holds is in it, those a background
        flush is sending included (read at once, a busy machine's in-flight flush is missed)."""
        if self.portal is not None:
            self.portal.call(self.router.records.flush)
        elif self.router.records.rows:  # the app has stopped (its stop flushed what it could)
            self.store.experiment.ingest(self.router.records.rows)
            self.router.records.rows = []
        return self.store.experiment.report()


@pytest.fixture
def app(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("SHIPYARD_API_KEYS", raising=False)
    _outside_serve(monkeypatch)
    return App(tmp_path, bundle)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with app.client() as c:
        yield c


def raw(body: dict[str, Any], **literals: str) -> bytes:
    """`body` as JSON with some values replaced by literal JSON text (what json.dumps would
    never write: huge integers, NaN, escapes of lone surrogates)."""
    text = json.dumps(body)
    for name, literal in literals.items():
        text = text.replace(json.dumps(f"@{name}@"), literal)
    return text.encode()


def numeric(row: dict[str, Any]) -> str:
    return "income" if "income" in row else next(k for k, v in row.items() if isinstance(v, float))


def categorical(row: dict[str, Any]) -> str:
    return next(k for k, v in row.items() if isinstance(v, str))


def body_with(row: dict[str, Any], field: str, literal: str, route_key: str = "instance") -> bytes:
    return raw({route_key: {**row, field: "@v@"}}, v=literal)


# --- every client mistake is a 4xx JSON answer naming the field --------------------------------
NUMBERS = {
    "an integer of 401 digits": "9" * 401,
    "an integer of 5000 digits": "9" * 5000,
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e400 (beyond float64)": "1e400",
    "1e308 (beyond float32)": "1e308",
    "-3.5e38 (beyond float32)": "-3.5e38",
}


@pytest.mark.parametrize("route", ["/predict", "/explain"])
@pytest.mark.parametrize("literal", list(NUMBERS.values()), ids=list(NUMBERS))
def test_a_number_the_model_cannot_read_is_422_naming_the_feature(
    client: TestClient, row: dict[str, Any], app: App, route: str, literal: str
) -> None:
    field = numeric(row)
    r = client.post(route, content=body_with(row, field, literal), headers=JSON)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"] and "finite" in r.json()["error"], r.text
    assert app.report()["variants"]["treatment"]["errors"] == 0


def test_the_largest_float32_is_still_served(client: TestClient, row: dict[str, Any]) -> None:
    r = client.post("/predict", content=body_with(row, numeric(row), "3.4e38"), headers=JSON)
    assert r.status_code == 200, r.text


SURROGATE = '"\\ud800"'


@pytest.mark.parametrize(
    ("where", "make_body", "names"),
    [
        ("key", lambda row: raw({"instance": row, "key": "@k@"}, k=SURROGATE), "key"),
        ("category", lambda row: body_with(row, categorical(row), SURROGATE), "instance."),
        ("field name", lambda row: json.dumps({"instance": {**row, "X": 1}}).replace('"X"', SURROGATE).encode(), "instance"),
        ("nested in instances", lambda row: raw({"instances": [row, {**row, "region": "@k@"}]}, k=SURROGATE), "instances.1.region"),
    ],
)  # fmt: skip
def test_invalid_unicode_is_422_naming_where(
    client: TestClient, row: dict[str, Any], where: str, make_body: Any, names: str
) -> None:
    r = client.post("/predict", content=make_body(row), headers=JSON)
    assert r.status_code == 422 and "Unicode" in r.json()["error"], r.text
    assert names in r.json()["error"], r.text


def test_a_refused_request_id_is_not_stored(client: TestClient) -> None:
    """A lone surrogate as request id is refused before anything is kept: the same feedback with
    a good id is then taken (once), not answered with 409."""
    bad = client.post("/feedback", content=b'{"request_id": "\\ud800", "outcome": 1}', headers=JSON)
    assert bad.status_code == 422 and "request_id" in bad.json()["error"], bad.text
    again = client.post(
        "/feedback", content=b'{"request_id": "\\ud800", "outcome": 1}', headers=JSON
    )
    assert again.status_code == 422, again.text
    good = client.post("/feedback", json={"request_id": "abc", "outcome": 1})
    assert good.status_code == 202, good.text
    assert client.post("/feedback", json={"request_id": "abc", "outcome": 1}).status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"instance": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "nesting"),
        (b'{"key": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "nesting"),
        (b'{"instance": {"a": 1}' + b"\xff\xfe" + b"}", 400, "not valid JSON"),
        (b'{"instance": {"a": 1}, "key": ' + b"7" * 4400 + b"}", 422, "key"),
        (b'{"instance": {"a": 1}, "key": "' + b"k" * 300 + b'"}', 422, "key"),
        (b'{"instance": {"a": 1}, "key": ""}', 422, "key"),
    ],
    ids=[
        "nesting 1000",
        "nesting 20",
        "not UTF-8",
        "huge integer key",
        "key too long",
        "empty key",
    ],
)
def test_malformed_bodies_are_4xx(client: TestClient, body: bytes, status: int, says: str) -> None:
    r = client.post("/predict", content=body, headers=JSON)
    assert r.status_code == status and says in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"request_id": "abc", "outcome": ' + b"9" * 400 + b"}", "outcome"),
        (b'{"request_id": "abc", "outcome": Infinity}', "outcome"),
        (b'{"request_id": "abc", "outcome": NaN}', "outcome"),
        (b'{"request_id": "' + b"a" * 65 + b'", "outcome": 1}', "request_id"),
        (b'{"request_id": "a b", "outcome": 1}', "request_id"),
        (b'{"request_id": "abc", "outcome": "1"}', "outcome"),
    ],
    ids=["huge outcome", "infinite outcome", "NaN outcome", "id too long", "id with a space", "outcome a string"],
)  # fmt: skip
def test_bad_feedback_is_422_naming_the_field(client: TestClient, body: bytes, says: str) -> None:
    r = client.post("/feedback", content=body, headers=JSON)
    assert r.status_code == 422 and says in r.json()["error"], r.text


@pytest.mark.parametrize(
    "body",
    [b'{"weights": {"treatment": Infinity}}', b'{"weights": {"treatment": 1e308, "control": 1e308}}',
     b'{"weights": {"treatment": NaN}}', b'{"shadow": {"treatment": Infinity}}',
     b'{"weights": {"treatment": ' + b"9" * 400 + b"}}"],
    ids=["infinite weight", "weights whose sum overflows", "NaN weight", "infinite shadow", "huge integer weight"],
)  # fmt: skip
def test_bad_weights_are_422_and_traffic_is_unchanged(
    client: TestClient, app: App, body: bytes
) -> None:
    before = app.store.experiment.snapshot()
    r = client.put("/variants", content=body, headers=ADMIN)
    assert r.status_code == 422 and (
        "weights" in r.json()["error"] or "shadow" in r.json()["error"]
    )
    assert app.store.experiment.snapshot() == before


@pytest.mark.parametrize("route", ["/predict", "/explain", "/feedback"])
@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data; boundary=x"])  # fmt: skip
def test_any_body_but_json_is_415(client: TestClient, route: str, kind: str) -> None:
    """What a page on another site can post without a preflight is refused, on every route."""
    r = client.post(
        route, content=b'{"request_id": "abc", "outcome": 1}', headers={"content-type": kind}
    )
    assert r.status_code == 415 and "application/json" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("DELETE", "/predict", 405)]
)
def test_framework_answers_are_json_too(
    client: TestClient, method: str, path: str, status: int
) -> None:
    r = client.request(method, path)
    assert r.status_code == status and path in r.json()["error"], r.text


# --- only a variant's own failure counts against it --------------------------------------------
def test_overflowing_numbers_on_treatment_keys_move_no_traffic(
    client: TestClient, app: App, row: dict[str, Any]
) -> None:
    """The abuse sequence: 300 requests with a 401-digit number on keys routed to treatment.
    Every one is a 422; the guardrail sees no treatment error; weights and aliases stay."""
    field, sent = numeric(row), 0
    before = (app.store.experiment.snapshot()["weights"], dict(app.aliases.table))
    for i in range(3000):
        if app.router._route(f"user-{i}", None)[0] != "treatment":
            continue
        r = client.post("/predict", content=raw({"instance": {**row, field: "@v@"}, "key": f"user-{i}"}, v="9" * 401), headers=JSON)  # fmt: skip
        assert r.status_code == 422, r.text
        sent += 1
        if sent == 300:
            break
    report = app.report()
    assert sent == 300 and report["variants"]["treatment"]["rejected"] == 300
    assert report["variants"]["treatment"]["errors"] == 0
    assert (app.store.experiment.snapshot()["weights"], dict(app.aliases.table)) == before


class Fragile:
    """A variant that fails (a server-side bug, not a typed refusal) on records whose `age`
    is 13; the rest of the time it is the real variant."""

    def __init__(self, inner: VariantModel) -> None:
        self.inner = inner

    async def predict(self, instances: list[Any]) -> dict[str, Any]:
        if any(r.get("age") == 13 for r in instances):
            raise RuntimeError("boom")
        return await self.inner.predict(instances)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _keys_of(app: App, variant: str, n: int) -> list[str]:
    keys = (f"user-{i}" for i in range(100_000))
    return [k for k in keys if app.router._route(k, None)[0] == variant][:n]


def test_a_failure_counts_against_the_treatment_only_if_control_answers(
    tmp_path: Path, bundle: Path, row: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_serve(monkeypatch)
    # Guardrails judge at 60 treatment requests, the last one sent: the rollback cannot come
    # while the loop below still expects the treatment's keys to reach it.
    app = App(tmp_path, bundle, guardrails={"min_requests": 60})
    app.router.pool.handles["treatment"] = Handle(Fragile(app.variants["treatment"]))
    with app.client() as client:
        for key in _keys_of(app, "control", 60):
            assert client.post("/predict", json={"instance": row, "key": key}).status_code == 200
        for key in _keys_of(app, "treatment", 60):  # fails on treatment only: served by control
            r = client.post("/predict", json={"instance": {**row, "age": 13}, "key": key})
            assert r.status_code == 200 and r.json()["variant"] == "control", r.text
            assert r.json()["routed_to"] == "treatment"
        t = app.report()["variants"]["treatment"]
        assert t["errors"] == 60 and t["error_rate"] == 1.0
        assert (
            app.store.experiment.snapshot()["weights"]["treatment"] == 0
        )  # a real failure: rolled back
        assert "challenger" not in app.aliases.table


def test_an_input_that_fails_every_variant_counts_against_none(
    app: App, row: dict[str, Any]
) -> None:
    for name in ("control", "treatment"):
        app.router.pool.handles[name] = Handle(Fragile(app.variants[name]))
    with app.client() as client:
        for key in _keys_of(app, "treatment", 250) + _keys_of(app, "control", 250):
            r = client.post("/predict", json={"instance": {**row, "age": 13}, "key": key})
            assert r.status_code == 503 and r.json()["error"], r.text
        for key in _keys_of(app, "treatment", 60):
            assert client.post("/predict", json={"instance": row, "key": key}).status_code == 200
        t = app.report()["variants"]["treatment"]
        assert t["input_failures"] == 250 and t["errors"] == 0
        assert app.store.experiment.snapshot()["weights"]["treatment"] == 50
        assert app.aliases.table["challenger"] == 2


# --- anonymous writes are bounded -------------------------------------------------------------
def test_pending_feedback_is_capped_oldest_dropped_and_counted(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_serve(monkeypatch)
    app = App(tmp_path, bundle, limits={"max_pending_feedback": 5})
    with app.client() as client:
        for i in range(8):
            assert (
                client.post("/feedback", json={"request_id": f"id{i}", "outcome": 1}).status_code
                == 202
            )
        report = client.get("/ab").json()
    assert report["feedback_pending"] == 5 and report["feedback_dropped"] == 3
    assert list(app.store.experiment.joins.pending) == [f"id{i}" for i in range(3, 8)]


# --- API keys on the data routes -------------------------------------------------------------
def test_data_routes_need_an_api_key_once_keys_are_set(
    tmp_path: Path, bundle: Path, row: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_serve(monkeypatch)
    monkeypatch.setenv("SHIPYARD_API_KEYS", "key-one, key-two")
    monkeypatch.setenv("SHIPYARD_ADMIN_TOKEN", TOKEN)
    app = App(tmp_path, bundle)
    with app.client() as client:
        calls = [("POST", "/predict", {"instance": row}), ("POST", "/explain", {"instance": row}),
                 ("POST", "/feedback", {"request_id": "abc", "outcome": 1}), ("GET", "/ab", None),
                 ("GET", "/variants", None)]  # fmt: skip
        for method, path, body in calls:
            assert client.request(method, path, json=body).status_code == 401, path
            wrong = client.request(method, path, json=body, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 403 and "X-API-Key" in wrong.json()["error"], path
            ok = client.request(method, path, json=body, headers={"X-API-Key": "key-two"})
            assert ok.status_code in (200, 202), (path, ok.text)
        assert client.get("/healthz").status_code == 200
        # an API key is not the admin token
        admin = client.put(
            "/variants", json={"weights": {"treatment": 10}}, headers={"X-API-Key": "key-one"}
        )
        assert admin.status_code == 401
        doc = client.get("/openapi.json").json()
        assert doc["paths"]["/predict"]["post"]["security"]


# --- a variant that cannot load ----------------------------------------------------------------
def test_a_variant_that_cannot_load_is_out_of_routing_and_its_keys_go_to_control(
    tmp_path: Path, bundle: Path, row: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_serve(monkeypatch)
    attempts = []

    def corrupt(model: str, version: int, uri: str | None) -> Any:
        attempts.append(version)
        raise ArtifactError("bundle file 'model.onnx' is corrupt (checksum mismatch)")

    app = App(tmp_path, bundle, loaders={"treatment": corrupt})
    info = app.variants["treatment"].info()
    assert info["loaded"] is False and "checksum mismatch" in info["error"]
    assert len(attempts) == 1  # not again within RELOAD_INTERVAL_S
    with pytest.raises(NotLoaded, match="checksum mismatch"):
        asyncio.run(app.variants["treatment"].predict([row]))
    with app.client() as client:
        assert client.portal is not None
        client.portal.call(app.router.check_health)
        keys = _keys_of(app, "treatment", 40)
        for key in keys:
            r = client.post("/predict", json={"instance": row, "key": key})
            assert r.status_code == 200 and r.json()["variant"] == "control", r.text
        listed = {v["variant"]: v for v in client.get("/variants").json()["variants"]}
        report = app.report()
    assert listed["treatment"]["healthy"] is False and listed["treatment"]["routed"] is False
    assert "checksum mismatch" in listed["treatment"]["error"]
    t = report["variants"]["treatment"]
    assert t["rerouted"] == 40 and t["errors"] == 0
    assert app.store.experiment.snapshot()["weights"]["treatment"] == 50


# --- property-based fuzzing over the request models -------------------------------------------
# Literal JSON text that json.dumps never writes, placed where a generated value says so.
LITERALS = {
    "@big@": "9" * 401, "@huge@": "9" * 4400, "@nan@": "NaN", "@inf@": "-Infinity",
    "@f64@": "1e400", "@f32@": "1e308", "@sur@": '"\\udc80"', "@deep@": "[" * 40 + "]" * 40,
}  # fmt: skip
FUZZ_EXAMPLES = 700


def _strategies(row: dict[str, Any]) -> Any:
    from hypothesis import strategies as st

    special = st.sampled_from(list(LITERALS))
    scalar = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12), special,
    )  # fmt: skip
    anything = st.recursive(
        scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )  # fmt: skip
    value = st.one_of(scalar, anything)
    # A real record with up to two fields swapped for anything (or added): mostly one mistake
    # at a time, so that most requests get past the first check and reach the model.
    fields = st.sampled_from([*row, "extra", "@sur@"])
    record = st.builds(lambda swaps: {**row, **swaps}, st.dictionaries(fields, value, max_size=2))
    key = st.one_of(st.none(), st.text(max_size=300), st.integers(), special)
    predict = st.one_of(
        st.builds(lambda r, k: {"instance": r, "key": k}, record, key),
        st.builds(lambda rs: {"instances": rs}, st.lists(record, max_size=3)),
        st.dictionaries(st.sampled_from(["instance", "instances", "key", "x"]), value, max_size=3),
    )
    feedback = st.fixed_dictionaries(
        {"request_id": st.one_of(st.text(max_size=70), special), "outcome": value}
    )
    weights = st.dictionaries(st.sampled_from(["control", "treatment", "x"]), value, max_size=2)
    traffic = st.fixed_dictionaries({}, optional={"weights": weights, "shadow": weights,
                                                  "control": value})  # fmt: skip
    return st.one_of(
        st.tuples(st.sampled_from(["/predict", "/explain"]), predict),
        st.tuples(st.just("/feedback"), feedback),
        st.tuples(st.just("/variants"), traffic),
        st.tuples(st.sampled_from(["/predict", "/feedback", "/variants"]), anything),
    )


def test_fuzzed_requests_never_get_a_5xx_and_every_answer_is_json(
    client: TestClient, app: App, row: dict[str, Any]
) -> None:
    """Hypothesis over the request models: valid records with any field swapped for anything
    (huge integers, NaN, lone surrogates, deep nesting, wrong types), and bodies of any shape,
    on every route that takes a body. No answer is a 5xx; every answer is JSON; no client's
    request moves traffic unless it is an admin's."""
    from hypothesis import HealthCheck, given, settings

    seen: dict[int, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(_strategies(row))
    def one(case: tuple[str, Any]) -> None:
        path, body = case
        text = json.dumps(body)
        for marker, literal in LITERALS.items():
            text = text.replace(json.dumps(marker), literal)
        if path == "/variants":
            r = client.put(path, content=text.encode(), headers=ADMIN)
        else:
            r = client.post(path, content=text.encode(), headers=JSON)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (text[:300], r.status_code, r.text[:300])
        answer = r.json()  # every answer is JSON
        assert r.status_code < 400 or answer["error"], r.text

    one()
    assert sum(seen.values()) == FUZZ_EXAMPLES
    assert {200, 400, 422} <= set(seen)  # it reached the models, and the edge refused some
    t = app.report()["variants"]["treatment"]
    assert t["errors"] == 0 and t["input_failures"] == 0


def test_the_proxys_guard_limits_size_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Serve's proxies run for every app on the cluster: the size limit from the node's
    environment, counted as bytes arrive; no opinion on content types (other apps' business)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from serving.edge import proxy_middlewares

    monkeypatch.setenv("SHIPYARD_PROXY_MAX_BODY_BYTES", "1000")

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/", echo, methods=["POST"])], middleware=proxy_middlewares())
    with TestClient(app) as c:
        ok = c.post("/", content=b"x" * 1000, headers={"content-type": "text/plain"})
        assert ok.status_code == 200 and ok.text == "1000"
        chunked = c.post("/", content=iter([b"x" * 600, b"x" * 600]))
        assert chunked.status_code == 413
        assert "SHIPYARD_PROXY_MAX_BODY_BYTES=1000" in chunked.json()["error"]


# --- a collaborator being replaced ------------------------------------------------------------
class Away:
    """The experiment store while its replica is being replaced: calls wait until it is back."""

    def __init__(self, inner: ExperimentStore) -> None:
        self.inner = inner
        self.away = True

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            while self.away:
                await asyncio.sleep(0.02)
            out = fn(*args)
            return await out if inspect.isawaitable(out) else out

        return call


def test_while_the_store_is_away_its_routes_answer_503_at_once_and_routing_goes_on(
    tmp_path: Path, bundle: Path, row: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_serve(monkeypatch)
    app = App(tmp_path, bundle, limits={"probe_timeout_s": 0.2, "timeout_s": 0.5})
    away = Away(app.store)
    with app.client() as client:
        assert client.portal is not None
        app.router.store.handle = Handle(away)
        # Not yet known to be away: the call waits limits.timeout_s, answers 503, and marks it.
        first = client.get("/ab")
        assert first.status_code == 503 and first.headers["Retry-After"] == "5"
        assert app.router.store.away is not None
        # Known to be away: 503 without waiting (the wait would be 0.5 s per call).
        started = time.monotonic()
        answers = [client.get("/ab") for _ in range(5)]
        answers += [
            client.post("/feedback", json={"request_id": f"f{i}", "outcome": 1}) for i in range(5)
        ]
        assert time.monotonic() - started < 5 * 0.5
        assert all(r.status_code == 503 and r.headers["Retry-After"] == "5" for r in answers)
        assert all("experiment store" in r.json()["error"] for r in answers)
        served = [
            client.post("/predict", json={"instance": row, "key": f"k{i}"}) for i in range(20)
        ]
        assert all(r.status_code == 200 for r in served)  # routing goes on from the local table
        away.away = False
        client.portal.call(app.router.check_store)
        assert app.router.store.away is None
        report = client.get("/ab").json()  # the requests answered meanwhile were kept
    assert sum(v["requests"] for v in report["variants"].values()) == 20


def test_the_record_buffer_sends_a_backlog_in_bounded_batches_and_keeps_what_failed() -> None:
    from serving.records import RecordBuffer

    sent: list[int] = []
    fail = {"after": 2}

    async def send(rows: list[dict[str, Any]]) -> list[Any]:
        if len(sent) == fail["after"]:
            raise ConnectionError("store away")
        sent.append(len(rows))
        return []

    async def nothing() -> None:
        return None

    buffer = RecordBuffer(send, nothing, max_rows=100, batch_rows=10)
    for i in range(35):
        buffer.add(id=str(i))
    asyncio.run(buffer.flush())  # two batches go, the third fails and stays
    assert sent == [10, 10] and [r["id"] for r in buffer.rows] == [str(i) for i in range(20, 35)]
    fail["after"] = -1
    asyncio.run(buffer.flush())
    assert sent == [10, 10, 10, 5] and buffer.rows == [] and buffer.dropped == 0


def test_a_flush_cancelled_mid_send_keeps_its_batch() -> None:
    """The background flush cancelled while a batch is on its way (the app shutting down; seen
    as a unit test that lost all 40 of its records) puts the batch back for the last flush."""
    from serving.records import RecordBuffer

    async def scenario() -> list[str]:
        started = asyncio.Event()

        async def send(rows: list[dict[str, Any]]) -> list[Any]:
            started.set()
            await asyncio.sleep(60)
            return []

        async def nothing() -> None:
            return None

        buffer = RecordBuffer(send, nothing, batch_rows=10)
        for i in range(15):
            buffer.add(id=str(i))
        task = asyncio.create_task(buffer.flush())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [r["id"] for r in buffer.rows]

    assert asyncio.run(scenario()) == [str(i) for i in range(15)]


def test_a_write_waiting_for_a_store_that_went_away_is_released_by_the_probe(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes get limits.timeout_s (a journal put can be slow), but not when the store is gone:
    once the router's probe finds it away, a feedback waiting on it is answered 503 at once."""
    _outside_serve(monkeypatch)
    app = App(tmp_path, bundle, limits={"probe_timeout_s": 0.2, "timeout_s": 8.0})
    away = Away(app.store)
    with app.client() as client:
        app.router.store.handle = Handle(away)  # the replica dies: calls hang, the probe times out
        started = time.monotonic()
        r = client.post("/feedback", json={"request_id": "f1", "outcome": 1})
        waited = time.monotonic() - started
        assert r.status_code == 503 and "experiment store" in r.json()["error"]
        assert waited < 4.0, waited  # the probe runs every second; timeout_s would be 8 s
