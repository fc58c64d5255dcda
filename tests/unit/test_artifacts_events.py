import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from shipyard.bundle.files import REQUIRED, verify_bundle, write_bundle
from shipyard.errors import ArtifactError
from shipyard.events import EventLog


def bundle(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    write_bundle(d, {name: f"content of {name}".encode() for name in REQUIRED})
    return d


def test_bundle_round_trip(tmp_path: Path) -> None:
    sums = verify_bundle(bundle(tmp_path))
    assert set(sums) == set(REQUIRED)


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    d = bundle(tmp_path)
    (d / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"'model.onnx' .* is corrupt"):
        verify_bundle(d)


def test_missing_file_and_manifest(tmp_path: Path) -> None:
    d = bundle(tmp_path)
    (d / "booster.ubj").unlink()
    with pytest.raises(ArtifactError, match="'booster.ubj' is missing"):
        verify_bundle(d)
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        verify_bundle(d)


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver that fails its first `fail` posts with 503."""

    received: list[dict[str, Any]] = []
    fail = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail > 0:
            Hook.fail -= 1
            self.send_response(503)
        else:
            Hook.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def hook() -> Any:
    Hook.received, Hook.fail = [], 0
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_events_go_to_log_and_webhook(tmp_path: Path, hook: Any) -> None:
    log = EventLog(tmp_path / "events.jsonl", f"http://127.0.0.1:{hook.server_port}/hook")
    log.emit("version_registered", model="m", version=3)
    assert log.drain(10)
    assert [e["kind"] for e in log.read()] == ["version_registered"]
    assert Hook.received and Hook.received[0]["version"] == 3 and log.webhook_sent == 1


def test_a_webhook_that_is_down_is_retried_off_the_callers_path(tmp_path: Path, hook: Any) -> None:
    """Three 503s, then up: every event arrives, in order, and `emit` never waited for it."""
    Hook.fail = 3
    log = EventLog(tmp_path / "e.jsonl", f"http://127.0.0.1:{hook.server_port}/hook",
                   attempts=5, backoff_s=0.05)  # fmt: skip
    for i in range(3):
        log.emit("traffic_changed", n=i)
    assert log.drain(10)
    assert [e["n"] for e in Hook.received] == [0, 1, 2]
    assert log.webhook_sent == 3 and log.webhook_failed == 0


def test_webhook_failure_never_raises_and_the_event_stays_in_the_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", "http://127.0.0.1:9/unreachable", timeout_s=0.5,
                   attempts=2, backoff_s=0.01)  # fmt: skip
    log.emit("run_failed", error="x")
    assert log.read()[0]["kind"] == "run_failed"
    assert log.drain(10) and log.webhook_failed == 1 and log.webhook_sent == 0


@pytest.mark.parametrize("where", ["local", "s3"])
def test_events_a_process_died_with_are_posted_after_a_restart(
    tmp_path: Path, hook: Any, where: str, request: pytest.FixtureRequest
) -> None:
    """The webhook is at least once across a crash: an event whose post died with its process
    (here: the webhook down, every attempt spent) is posted again by the next process to start,
    with its id; a delivered one is not; one younger than the grace is left to its emitter."""
    path = (
        str(tmp_path / "e.jsonl")
        if where == "local"
        else f"{request.getfixturevalue('s3_uri')}/events"
    )
    url = f"http://127.0.0.1:{hook.server_port}/hook"
    Hook.fail = 10**6  # down for the first process
    first = EventLog(path, url, attempts=1, backoff_s=0.01)
    lost = first.emit("canary_rolled_back", variant="t")
    assert first.drain(10) and first.webhook_failed == 1 and Hook.received == []
    Hook.fail = 0
    delivered = first.emit("traffic_changed", n=1)
    assert first.drain(10) and [e["id"] for e in Hook.received] == [delivered["id"]]
    assert first.delivered() == {delivered["id"]}

    again = EventLog(path, url)  # the next process: a restarted store, a new job
    assert again.resend_undelivered(grace_s=60) == 0  # both are seconds old: their emitter's
    assert again.resend_undelivered(grace_s=0) == 1 and again.drain(10)
    assert [e["id"] for e in Hook.received] == [delivered["id"], lost["id"]]
    assert Hook.received[1]["kind"] == "canary_rolled_back"
    assert EventLog(path, url).resend_undelivered(grace_s=0) == 0  # now recorded as delivered
    assert [e["kind"] for e in again.read()] == ["canary_rolled_back", "traffic_changed"]
