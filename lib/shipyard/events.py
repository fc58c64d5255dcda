"""One event log (JSON lines) for everything a person would want to know, plus an optional webhook."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from shipyard.contract import WEBHOOK_ENV

logger = logging.getLogger(__name__)


class EventLog:
    """Append-only JSONL log; a webhook failure is logged, never raised (events are advisory)."""

    def __init__(self, path: str | Path, webhook_url: str | None = None, timeout_s: float = 3.0):
        self.path = Path(path)
        self.webhook_url = webhook_url or os.environ.get(WEBHOOK_ENV) or None
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def emit(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}
        line = json.dumps(event, default=str, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")
        if self.webhook_url:
            self._post(line)
        return event

    def _post(self, body: str) -> None:
        req = urllib.request.Request(
            self.webhook_url,  # type: ignore[arg-type]
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except Exception as err:  # advisory channel: never fail the caller
            logger.warning("webhook %s failed: %s", self.webhook_url, err)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
