"""One event log for everything a person would want to know, plus an optional webhook.

On a disk the log is one JSON-lines file (shared by the jobs and the serving app of a machine);
under an object-store URI it is a folder with one object per event (objects cannot be appended
to), named by time so that a listing is the log in order."""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from shipyard.contract import WEBHOOK_ENV
from shipyard.errors import StorageError
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)


class EventLog:
    """Append-only log, plus an optional webhook sent off the caller's path: `emit` writes the
    event and queues the post; one sender thread posts with retries and exponential backoff.
    A webhook that is down never blocks or fails the caller and never loses an event (it is in
    the log); posts it could not deliver are logged and counted (`webhook_failed`). A log that
    storage refuses is logged and counted (`log_failed`), never raised: the change the event
    tells of has already happened."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        webhook_url: str | None = None,
        timeout_s: float = 3.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_queued: int = 1000,
    ):
        self.where = os.fspath(path)
        self.store = StateDir(self.where) if "://" in self.where else None
        self.path = Path(self.where)
        self.log_failed = 0
        self.webhook_url = webhook_url or os.environ.get(WEBHOOK_ENV) or None
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.webhook_sent = 0
        self.webhook_failed = 0  # gave up after `attempts`, or dropped with the queue full
        self._lock = threading.Lock()
        self._queue: queue.Queue[str] = queue.Queue(max_queued)
        self._sender: threading.Thread | None = None

    def emit(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}
        line = json.dumps(event, default=str, sort_keys=True)
        if self.store is not None:
            try:
                self.store.write(f"{int(event['ts'] * 1e6):017d}-{event['id']}.json", line)
            except StorageError as err:
                self.log_failed += 1
                logger.warning("event %s not logged: %s", kind, err)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("a") as fh:
                fh.write(line + "\n")
        if self.webhook_url:
            self._enqueue(line)
        return event

    def _enqueue(self, line: str) -> None:
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="webhook", daemon=True)
                self._sender.start()
                atexit.register(self.drain, 10.0)  # a job that exits right after emit
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.webhook_failed += 1
            logger.warning("webhook queue full: event not posted (it is in %s)", self.where)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued post is sent or given up; False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._queue.unfinished_tasks

    def _send_loop(self) -> None:
        while True:
            line = self._queue.get()
            try:
                self._post(line)
            finally:
                self._queue.task_done()

    def _post(self, body: str) -> None:
        req = urllib.request.Request(
            self.webhook_url,  # type: ignore[arg-type]
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        for attempt in range(self.attempts):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.webhook_sent += 1
                return
            except Exception as err:  # advisory channel: retried, never raised to the caller
                if attempt + 1 == self.attempts:
                    self.webhook_failed += 1
                    logger.warning("webhook %s failed %d times, last: %s (the event is in %s)",
                                   self.webhook_url, self.attempts, err, self.where)  # fmt: skip
                    return
                time.sleep(self.backoff_s * 2**attempt)

    def read(self) -> list[dict[str, Any]]:
        if self.store is not None:
            return [json.loads(self.store.read(n) or b"{}") for n in self.store.files()]
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
