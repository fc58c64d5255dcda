"""Losing a node under load, on a multi-node cluster of the test's own: a 0-CPU head and two
worker nodes labelled on-demand (`ray start` each, on this machine), the serving app's state on
the S3 server the tests start. The node holding the experiment store is killed outright (its
raylet, agents and every worker, SIGKILL) while four clients send keyed requests and post an
outcome for each answer; whatever else ran there (a router, a drift actor) goes with it.

What must hold: no request fails (a client whose router went retries on the other one, as a load
balancer would); every answered request and every acknowledged outcome is counted exactly once
when the store is back (a request cut off by the kill may be counted although its answer never
arrived); the drift actors answer again and count what they lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, SERVE_ENV, serve_deploy
from tests.s3server import BUCKET

LABEL = {"shipyard.io/capacity": "on-demand"}
CLIENTS = 4
REQUESTS = 1000  # answered in all, at least
KILL_AFTER = 300  # answered before the kill


class Drill:
    def __init__(self, head: Any, workers: list[Any], records: list[dict[str, Any]]) -> None:
        self.head, self.workers, self.records = head, workers, records

    def urls(self) -> list[str]:
        from shipyard.compute.ingress import direct_urls

        return direct_urls(self.head.address)

    def replicas(self) -> list[tuple[str, str]]:
        """(deployment, node id) of each of the app's running replicas, as Serve lists them."""
        from shipyard.compute.ingress import serve_details

        app = serve_details(self.head.address)["applications"]["shipyard"]
        return sorted(
            (name, r["node_id"])
            for name, d in app["deployments"].items()
            for r in d["replicas"]
            if r["state"] == "RUNNING"
        )

    def node_of(self, deployment: str) -> str:
        return next(node for name, node in self.replicas() if name == deployment)


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[Drill]:
    from benchmarks.serving import MODEL, make_model
    from shipyard.compute.localray import LocalCluster, LocalNode

    home = tmp_path_factory.mktemp("node-loss")
    uri, _, records = make_model(home, rows=4000)
    env = {"SHIPYARD_HOME": str(home), "MLFLOW_TRACKING_URI": uri,
           "SHIPYARD_ADMIN_TOKEN": ADMIN_TOKEN, "MLFLOW_DISABLE_TELEMETRY": "true",
           "SHIPYARD_SERVING_NODES": "shipyard.io/capacity=on-demand",
           **SERVE_ENV, **s3_server.env}  # fmt: skip
    with LocalCluster(num_cpus=0, env=env, log_path=home / "ray-head.log") as head:
        workers: list[Any] = []
        try:
            for _ in range(2):
                workers.append(LocalNode(head, num_cpus=1, labels=LABEL).start())
            args = {
                "model": MODEL,
                "variants": [
                    {"name": "control", "version": "champion", "weight": 90, "num_replicas": 2,
                     "max_replicas_per_node": 1},
                    {"name": "treatment", "version": "challenger", "weight": 10, "num_replicas": 1},
                ],
                "router_replicas": 2,
                "router_max_replicas_per_node": 1,
                "state_uri": f"s3://{BUCKET}/node-loss-{uuid.uuid4().hex[:8]}",
                "ab": {"recover_after_s": 3.0},
                "limits": {"fallback_after_s": 2.0, "probe_timeout_s": 1.0},
                "drift": {"window_rows": 400, "batch_rows": 100, "flush_interval_s": 0.2,
                          "checkpoint_s": 1.0},
                "capture": {"file_s": 2.0},
            }  # fmt: skip
            serve_deploy(head.address, args, home / "serve.yaml")
            d = Drill(head, workers, records)
            deadline = time.monotonic() + 240
            while len(d.urls()) < 2 or not all(_healthy(u) for u in d.urls()):
                assert time.monotonic() < deadline, f"the app did not come up: {d.replicas()}"
                time.sleep(1)
            yield d
        finally:
            for w in workers:
                w.stop()


def _healthy(url: str) -> bool:
    try:
        return bool(requests.get(f"{url}/healthz", timeout=5).json().get("ok"))
    except (requests.RequestException, ValueError):
        return False


def _sums(report: dict[str, Any]) -> tuple[int, int]:
    variants = report["variants"].values()
    return sum(v["requests"] for v in variants), sum(v["outcomes"] for v in variants)


class Clients:
    """Four clients, each posting keyed requests to a router and an outcome for every answer;
    a client whose router stops answering moves to another (a load balancer's retry)."""

    def __init__(self, drill: Drill) -> None:
        self.drill = drill
        self.lock = threading.Lock()
        self.answered: list[str] = []
        self.acked: list[str] = []  # outcomes the app acknowledged (200 or 202)
        self.unacked: list[tuple[str, int]] = []  # to post again once the store is back
        self.cut_off = 0  # requests with no answer (a connection the kill broke)
        self.failed: list[str] = []  # an answer that was an error: must stay empty
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(c,)) for c in range(CLIENTS)]

    def run(self, client: int) -> None:
        session, i = requests.Session(), 0
        urls = self.drill.urls()
        url = urls[client % len(urls)]
        while not self.stop.is_set():
            rec = self.drill.records[i % len(self.drill.records)]
            body: dict[str, Any] = {"instances": [rec], "key": f"c{client}-{i}"}
            try:
                r = session.post(f"{url}/predict", json=body, timeout=30)
            except requests.RequestException:
                with self.lock:
                    self.cut_off += 1
                url = self._another(url)
                session = requests.Session()
                continue
            if r.status_code != 200:
                with self.lock:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")
                continue
            rid, outcome = r.json()["request_id"], i % 2
            with self.lock:
                self.answered.append(rid)
            self.outcome(session, url, rid, outcome)
            i += 1

    def _another(self, dead: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = [u for u in self.drill.urls() if u != dead and _healthy(u)]
            if alive:
                return alive[0]
            time.sleep(0.5)
        raise AssertionError("no router answered within 60 s")

    def outcome(self, session: requests.Session, url: str, rid: str, outcome: int) -> None:
        try:
            r = session.post(f"{url}/feedback", json={"request_id": rid, "outcome": outcome},
                             timeout=30)  # fmt: skip
            ok = r.status_code in (200, 202)
        except requests.RequestException:
            ok = False
        with self.lock:
            (self.acked.append(rid) if ok else self.unacked.append((rid, outcome)))

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


class Probe(threading.Thread):
    """GET /ab and /drift every 0.5 s from the kill on: until when each answered other than 200."""

    def __init__(self, drill: Drill) -> None:
        super().__init__(daemon=True)
        self.drill, self.stop, self.t0 = drill, threading.Event(), time.monotonic()
        self.last_down: dict[str, float] = {"/ab": 0.0, "/drift": 0.0}
        self.seen: dict[str, Counter[int]] = {r: Counter() for r in self.last_down}

    def run(self) -> None:
        url = ""
        while not self.stop.is_set():
            for route in self.last_down:
                try:
                    r = requests.get(f"{url}{route}", timeout=10)
                    ok = r.status_code == 200 and (route != "/drift" or _all_available(r.json()))
                    self.seen[route][r.status_code] += 1
                except (requests.RequestException, ValueError):
                    ok = False
                    url = next((u for u in self.drill.urls() if _healthy(u)), "")
                if not ok:
                    self.last_down[route] = time.monotonic() - self.t0
            time.sleep(0.5)


def _all_available(report: dict[str, Any]) -> bool:
    return all(v.get("available") for v in report.get("variants", {}).values())


def _wait(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        out = check()
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_losing_the_store_s_node_under_load_loses_nothing_acknowledged(drill: Drill) -> None:
    before = drill.replicas()
    victim_id = drill.node_of("experiment")
    victim = next(w for w in drill.workers if w.node_id == victim_id)
    lost_here = [name for name, node in before if node == victim_id]
    with Clients(drill) as clients:
        _wait("answers before the kill", lambda: len(clients.answered) >= KILL_AFTER, 180)
        probe = Probe(drill)
        victim.kill()
        probe.start()
        _wait("the load after the kill", lambda: len(clients.answered) >= REQUESTS, 300)
        _wait("/ab and /drift answering for 5 s", lambda: all(
            time.monotonic() - probe.t0 - t > 5 for t in probe.last_down.values()), 180)  # fmt: skip
        probe.stop.set()
    url = _wait("a router", lambda: next((u for u in drill.urls() if _healthy(u)), None), 60)
    print(f"killed node {victim_id[:8]} holding {lost_here}; now {drill.replicas()}; "
          f"answering again after (s): {probe.last_down}; statuses {probe.seen}")  # fmt: skip
    _wait("the store on another node", lambda: drill.node_of("experiment") != victim_id, 60)
    assert not clients.failed, clients.failed[:5]
    for rid, outcome in clients.unacked:  # outcomes refused, or their answer lost, meanwhile
        r = requests.post(
            f"{url}/feedback", json={"request_id": rid, "outcome": outcome}, timeout=30
        )
        # 409: stored the first time, its answer lost with the node: counted once.
        assert r.status_code in (200, 202) or "already has an outcome" in r.text, r.text
        clients.acked.append(rid)
    answered, acked = len(clients.answered), len(clients.acked)
    assert answered >= REQUESTS and acked == answered

    last: dict[str, Any] = {}

    def counted() -> tuple[int, int] | None:
        r = requests.get(f"{url}/ab", timeout=30)
        if r.status_code != 200:
            return None
        last.update(r.json())
        sums = _sums(last)  # an outcome of a request another variant answered counts for none
        done = sums[0] >= answered and sums[1] + last["feedback_not_counted"] >= acked
        return sums if done else None

    try:
        sums = _wait("every answered request and outcome at the store", counted, 120)
    except AssertionError:
        raise AssertionError(
            f"answered {answered}, acked {acked}, cut off {clients.cut_off}, counted "
            f"{_sums(last) if last else None}: store {last.get('store')}, router "
            f"{last.get('router')}, pending {last.get('feedback_pending')}, unmatched "
            f"{last.get('feedback_unmatched')}"
        ) from None
    report = requests.get(f"{url}/ab", timeout=30).json()
    print(f"answered {answered}, cut off {clients.cut_off}, counted {sums}, "
          f"store {report['store']}")  # fmt: skip
    assert answered <= sums[0] <= answered + clients.cut_off, report["store"]
    assert sums[1] + report["feedback_not_counted"] == acked, report
    assert report["feedback_pending"] == 0, report
    drift = _wait("the drift actors", lambda: _drift_up(url), 120)
    for name, status in drift["variants"].items():
        held = status["rows"]
        assert held + status["rows_lost"] + status["dropped_rows"] <= answered + clients.cut_off
        print(f"drift {name}: held {held}, lost {status['rows_lost']}, "
              f"dropped {status['dropped_rows']}, restored {status['restored_from']}")  # fmt: skip


def _drift_up(url: str) -> dict[str, Any] | None:
    r = requests.get(f"{url}/drift", timeout=30)
    if r.status_code != 200:
        return None
    out: dict[str, Any] = r.json()
    return out if all(v["available"] for v in out["variants"].values()) else None
