"""The spot watcher against fake metadata servers, and the on-demand fallback's control step."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shipyard.compute import spot


class FakeMetadata:
    """AWS IMDSv2 and GCE metadata, enough of both: token, life cycle, notices."""

    def __init__(self) -> None:
        self.notice: dict[str, Any] | None = None
        self.lifecycle = "spot"
        self.gcp_preempted = False
        self.gcp_preemptible = True
        self.tokens_issued = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                self.send_response(code)
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token":
                    fake.tokens_issued += 1
                    return self._send(200, "tok")
                self._send(404)

            def do_GET(self) -> None:
                if self.path.startswith("/latest/"):
                    if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                        return self._send(401)
                    if self.path == "/latest/meta-data/instance-life-cycle":
                        return self._send(200, fake.lifecycle)
                    if self.path == "/latest/meta-data/spot/instance-action" and fake.notice:
                        return self._send(200, json.dumps(fake.notice))
                    return self._send(404)
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403)
                if self.path == "/computeMetadata/v1/instance/preempted":
                    return self._send(200, "TRUE" if fake.gcp_preempted else "FALSE")
                if self.path == "/computeMetadata/v1/instance/scheduling/preemptible":
                    return self._send(200, "TRUE" if fake.gcp_preemptible else "FALSE")
                self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def meta() -> Iterator[FakeMetadata]:
    m = FakeMetadata()
    yield m
    m.server.shutdown()


def test_aws_watcher_drains_once_on_the_spot_notice(meta: FakeMetadata) -> None:
    src = spot.AwsNotices(meta.url)
    assert src.is_spot() and src.poll() is None
    polls: list[int] = []
    drained: list[spot.Notice] = []

    def stop() -> bool:
        polls.append(1)
        if len(polls) == 3:  # the notice arrives while the watcher runs
            meta.notice = {"action": "terminate", "time": "2099-01-01T00:00:00Z"}
        return len(polls) > 10

    notice = spot.watch(src, drained.append, interval_s=0.01, stop=stop)
    assert notice is not None and drained == [notice]
    assert notice.action == "terminate" and notice.cloud == "aws"
    assert len(polls) == 3  # returned at the notice, did not keep polling
    assert meta.tokens_issued == 1  # the IMDSv2 token is reused


def test_aws_notice_deadline_comes_from_the_notice_time(meta: FakeMetadata) -> None:
    import time

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 100))
    meta.notice = {"action": "stop", "time": when}
    notice = spot.AwsNotices(meta.url).poll()
    assert notice is not None and notice.action == "stop"
    assert 95 <= notice.deadline_s <= 100


def test_on_demand_instances_are_not_watched(meta: FakeMetadata) -> None:
    meta.lifecycle = "on-demand"
    assert not spot.AwsNotices(meta.url).is_spot()
    meta.gcp_preemptible = False
    assert not spot.GcpNotices(meta.url).is_spot()


def test_gcp_watcher_sees_preempted(meta: FakeMetadata) -> None:
    src = spot.GcpNotices(meta.url)
    assert src.is_spot() and src.poll() is None
    meta.gcp_preempted = True
    notice = src.poll()
    assert notice == spot.Notice("gcp", "preempted", 30)


def test_metadata_errors_are_retried_not_fatal() -> None:
    calls = []

    class Flaky:
        def poll(self) -> spot.Notice | None:
            calls.append(1)
            if len(calls) < 3:
                raise OSError("connection refused")
            return spot.Notice("aws", "terminate", 120)

    drained: list[spot.Notice] = []
    assert spot.watch(Flaky(), drained.append, interval_s=0.0) is not None
    assert len(calls) == 3 and len(drained) == 1


def test_drain_command_uses_reason_preemption() -> None:
    cmd = spot.drain_command("ab" * 28, "10.0.0.1:6379", spot.Notice("aws", "terminate", 110))
    assert cmd[1] == "drain-node"
    assert cmd[cmd.index("--reason") + 1] == "DRAIN_NODE_REASON_PREEMPTION"
    assert cmd[cmd.index("--deadline-remaining-seconds") + 1] == "110"
    assert cmd[cmd.index("--node-id") + 1] == "ab" * 28


CONFIG = {
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}},
        "cpu-spot": {"priority": 10, "labels": {spot.CAPACITY_LABEL: "spot"}},
        "gpu-spot": {"priority": 10, "labels": {spot.CAPACITY_LABEL: "spot"}},
        "cpu-ondemand": {"priority": 1, "labels": {spot.CAPACITY_LABEL: "on-demand"}},
    },
}


def apply(config: dict[str, Any], changes: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(config))
    for t, p in changes.items():
        out["available_node_types"][t]["priority"] = p
    return out


def test_a_failed_spot_launch_puts_on_demand_first_until_the_cooldown_ends() -> None:
    state = spot.initial_state(CONFIG)
    assert state.original_priority == {"cpu-spot": 10, "gpu-spot": 10}
    changes, notes = spot.step(
        CONFIG, state, [("cpu-spot", 1000, "InsufficientInstanceCapacity")], 1001, 600
    )
    assert changes == {
        "cpu-spot": -1
    }  # below cpu-ondemand (1) and the default 0; gpu-spot untouched
    assert "InsufficientInstanceCapacity" in notes[0]
    cfg = apply(CONFIG, changes)
    # The same failure reported again changes nothing; neither does an on-demand failure.
    again, _ = spot.step(
        cfg, state, [("cpu-spot", 1000, "x"), ("cpu-ondemand", 1100, "y")], 1200, 600
    )
    assert again == {}
    # A later spot failure extends the cooldown.
    spot.step(cfg, state, [("cpu-spot", 1300, "again")], 1301, 600)
    assert state.lowered_until["cpu-spot"] == 1900
    still, _ = spot.step(cfg, state, [], 1899, 600)
    assert still == {}
    back, notes = spot.step(cfg, state, [], 1900, 600)
    assert back == {"cpu-spot": 10} and "spot preferred again" in notes[0]


def test_old_failures_after_a_restart_are_ignored_and_state_round_trips() -> None:
    state = spot.initial_state(CONFIG)
    changes, _ = spot.step(CONFIG, state, [("cpu-spot", 100, "old")], 10_000, 600)
    assert changes == {}
    restored = spot.FallbackState.from_json(state.to_json())
    assert restored == state


def test_lowered_priority_is_below_every_on_demand_type() -> None:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["available_node_types"]["cpu-ondemand"]["priority"] = -5
    assert spot.lowered_priority(cfg, spot.initial_state(cfg)) == -6
