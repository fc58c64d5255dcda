"""One event log for everything a person would want to know, plus an optional webhook.

On a disk the log is one JSON-lines file (shared by the jobs and the serving app of a machine);
under an object-store URI it is a folder with one object per event (objects cannot be appended
to), named by time so that a listing is the log in order.

The webhook is at least once, across crashes too: each event the webhook took is recorded as
delivered (`<log>.delivered` beside the file, `delivered/<id>` in the folder), and a process
that starts (`resend_undelivered`: the serving app's store, every training job) posts again the
recent events that have no such record, which a process that died took with it. Every post
carries the event's `id`, so a receiver can drop what it has seen."""

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
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue(max_queued)  # (id, body)
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
            self._enqueue(event["id"], line)
        return event

    def delivered(self) -> set[str]:
        """Ids of the events the webhook took (by any process writing this log)."""
        if self.store is not None:
            return set(self.store.files("delivered"))
        marks = self.path.with_name(self.path.name + ".delivered")
        return set(marks.read_text().split()) if marks.exists() else set()

    def _mark_delivered(self, event_id: str) -> None:
        try:
            if self.store is not None:
                self.store.write(f"delivered/{event_id}", b"")
            else:
                with self._lock, self.path.with_name(self.path.name + ".delivered").open("a") as fh:
                    fh.write(event_id + "\n")
        except (OSError, StorageError) as err:  # at worst it is posted again after a restart
            logger.warning("webhook delivery of %s not recorded: %s", event_id, err)

    def resend_undelivered(self, grace_s: float = 60.0, max_age_s: float = 86_400.0) -> int:
        """Queue again the events of the last `max_age_s` that the webhook never took (a process
        died with them queued, or the webhook was down); those younger than `grace_s` are left
        to the process that emitted them. Returns how many were queued."""
        if not self.webhook_url:
            return 0
        try:
            done, now = self.delivered(), time.time()
            events = [e for e in self.read() if e.get("id") and e["id"] not in done
                      and now - max_age_s <= float(e.get("ts", 0)) <= now - grace_s]  # fmt: skip
        except (OSError, StorageError, ValueError) as err:  # advisory: never fails a start
            logger.warning("webhook: undelivered events not read: %s", err)
            return 0
        for e in events:
            self._enqueue(e["id"], json.dumps(e, default=str, sort_keys=True))
        if events:
            logger.info("webhook: %d undelivered event(s) queued again", len(events))
        return len(events)

    def _enqueue(self, event_id: str, line: str) -> None:
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="webhook", daemon=True)
                self._sender.start()
                atexit.register(self.drain, 10.0)  # a job that exits right after emit
        try:
            self._queue.put_nowait((event_id, line))
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
            event_id, line = self._queue.get()
            try:
                if self._post(line):
                    self._mark_delivered(event_id)
            finally:
                self._queue.task_done()

    def _post(self, body: str) -> bool:
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
                return True
            except Exception as err:  # advisory channel: retried, never raised to the caller
                if attempt + 1 == self.attempts:
                    self.webhook_failed += 1
                    logger.warning("webhook %s failed %d times, last: %s (the event is in %s)",
                                   self.webhook_url, self.attempts, err, self.where)  # fmt: skip
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False

    def read(self) -> list[dict[str, Any]]:
        if self.store is not None:  # the events; delivery records are a folder of their own
            return [json.loads(self.store.read(n) or b"{}") for n in self.store.files()]
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
