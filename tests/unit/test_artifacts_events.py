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


def test_events_go_to_log_and_webhook(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = EventLog(tmp_path / "events.jsonl", f"http://127.0.0.1:{server.server_port}/hook")
        log.emit("version_registered", model="m", version=3)
    finally:
        server.shutdown()
    assert [e["kind"] for e in log.read()] == ["version_registered"]
    assert received and received[0]["version"] == 3


def test_webhook_failure_never_raises(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", "http://127.0.0.1:9/unreachable", timeout_s=0.5)
    log.emit("run_failed", error="x")
    assert log.read()[0]["kind"] == "run_failed"
