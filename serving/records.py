"""The router's record buffer: what each answered request adds to the A/B statistics.

`add` is a list append on the request path; a background loop hands the buffer to the experiment
store every `interval_s`. A slow or restarting store never slows a request: its batch goes back
in front of the buffer, which holds at most `max_rows` (older rows beyond that are dropped from
memory and counted, GET /ab -> router -> dropped_records). With a segment log
(`shipyard.ab.segments`, `ab.durable_answers`) every row is also written to the router's own
segment before its request is answered, and a dropped row is left there for the store to
recover; the segments of rows the store has taken are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shipyard.ab.segments import SegmentLog

logger = logging.getLogger(__name__)

Send = Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]


class RecordBuffer:
    def __init__(
        self,
        send: Send,
        on_actions: Callable[[], Awaitable[None]],
        max_rows: int = 200_000,
        interval_s: float = 0.2,
        batch_rows: int = 5_000,
        segments: SegmentLog | None = None,
    ) -> None:
        self.send = send
        self.on_actions = on_actions  # the store changed traffic (a guardrail fired): refresh
        self.max_rows = max_rows
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.segments = segments
        self.rows: list[dict[str, Any]] = []
        self.dropped = 0
        # One flush at a time: a caller that flushes before reading or joining (GET /ab,
        # POST /feedback) must find its rows at the store, not in another caller's batch that
        # is still on its way there.
        self._flushing = asyncio.Lock()

    def add(self, kind: str = "req", **fields: Any) -> None:
        """Every row has an id (a request's own; a fresh one for a shadow answer), so the store
        counts a row that was sent twice once."""
        row = {"t": kind, **fields}
        if kind == "req":
            row["ts"] = time.time()
        else:
            row.setdefault("id", f"{kind}-{uuid.uuid4().hex}")
        self.rows.append(row)
        if self.segments is not None:
            self.segments.add(row)

    async def saved(self) -> None:
        """Every row added so far is in a written segment (or counted unsaved)."""
        if self.segments is not None:
            await self.segments.saved()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.segments is not None:
                await self.segments.retry()
            await self.flush()

    async def flush(self) -> None:
        """Send everything buffered, `batch_rows` at a time (each call stays quick, also after a
        backlog built up while the store was away). When it returns, every row added before
        the call has reached the store, or the store is away and the rows wait in the buffer."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self.rows:
            batch, self.rows = self.rows[: self.batch_rows], self.rows[self.batch_rows :]
            try:
                actions = await self.send(batch)
            except asyncio.CancelledError:
                # Stopped mid-send (the replica shutting down, the app redeployed): the batch
                # goes back, so a last flush still has it; the store counts a row twice once.
                self.rows = batch + self.rows
                raise
            except Exception as err:
                logger.warning("could not flush %d records (will retry): %s", len(batch), err)
                self.rows = batch + self.rows
                if len(self.rows) > self.max_rows:
                    gone = self.rows[: len(self.rows) - self.max_rows]
                    self.dropped += len(gone)
                    self.rows = self.rows[-self.max_rows :]
                    if self.segments is not None:
                        self.segments.forget(gone)  # in their segments, for the store to take
                return
            if self.segments is not None:
                await self._delete(self.segments.delivered(batch))
            if actions:
                await self.on_actions()

    async def _delete(self, names: list[str]) -> None:
        """Segments the store has wholly taken; one left behind is recovered once (harmless)."""
        if names and self.segments is not None:
            try:
                await asyncio.to_thread(self.segments.delete, names)
            except Exception as err:
                logger.warning("could not delete %d delivered segments: %s", len(names), err)
