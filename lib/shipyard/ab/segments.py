"""Answered requests made durable before their answer: the router's record segments.

Each router replica appends the A/B records of the requests it answers to segments of its own
under the app's `state_uri` (`records/<writer>/<ms>-<seq>.json`), by group commit: a request's
answer waits until a segment holding its record is written (one write carries every record that
arrived meanwhile, so under load a write serves many requests). The router still hands the
records to the experiment store every fraction of a second; once the store has journaled them
the router deletes their segments. So a router killed outright (its node lost) loses no answered
request: its segments stay, and the store ingests any segment older than a grace period
(`collect`), counting each request id once (a record both delivered and recovered counts once).

If storage refuses a write, the answer is not held back: the records wait in the router's
memory, are written with the next segment, and are counted meanwhile as `unsaved` (GET /ab ->
router -> records): what a router's death would lose at that moment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

FOLDER = "records"
_NAME = re.compile(r"^(\d{13})-(\d{8})\.json$")


class SegmentLog:
    """One router replica's segments (its own folder: no other writer shares a name)."""

    def __init__(
        self,
        state: StateDir,
        writer: str | None = None,
        clock: Callable[[], float] = time.time,
        max_unsaved: int = 200_000,
    ) -> None:
        self.folder = state.child(FOLDER)
        self.writer = writer or uuid.uuid4().hex[:16]
        self.clock = clock
        self.max_unsaved = max_unsaved
        self.seq = 0
        self.pending: list[dict[str, Any]] = []  # added, not yet in a write
        self.unsaved: list[dict[str, Any]] = []  # a write storage refused: in the next one
        self.lost = 0  # unsaved beyond max_unsaved (storage away for long): dropped, counted
        self.added = 0
        self.settled = 0  # rows whose write finished (written, or refused and kept unsaved)
        self.written = 0
        self.failures = 0
        self._writing: asyncio.Task[None] | None = None
        self._live: dict[str, set[str]] = {}  # segment name -> ids the store has not taken yet
        self._where: dict[str, str] = {}  # row id -> its segment
        self._unwritten: set[str] = set()  # ids added, not in a written segment yet
        self._taken: set[str] = set()  # of those, ids the store has taken (no write needed)
        self.done: list[str] = []  # written segments the store had wholly taken meanwhile

    def add(self, row: dict[str, Any]) -> None:
        """A record (with its `id`) for the next segment; `saved()` waits for it."""
        self.pending.append(row)
        self._unwritten.add(str(row["id"]))
        self.added += 1

    async def saved(self) -> None:
        """Return once every record added before the call is in a written segment, or at the
        store already (or its write was refused: then it waits in memory, counted unsaved)."""
        target = self.added
        while self.settled < target:
            if self._writing is None:
                self._writing = asyncio.get_running_loop().create_task(self._write())
            await asyncio.shield(self._writing)

    async def retry(self) -> None:
        """Write what storage refused before (the router's flush loop calls this)."""
        if self.unsaved and self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write())
            await asyncio.shield(self._writing)

    async def _write(self) -> None:
        fresh, self.pending = self.pending, []
        rows = []
        for r in self.unsaved + fresh:  # those the store took meanwhile are durable there
            rid = str(r["id"])
            if rid in self._taken:
                self._taken.discard(rid)
                self._unwritten.discard(rid)
            else:
                rows.append(r)
        try:
            if rows:
                self.seq += 1
                name = f"{self.writer}/{int(self.clock() * 1000):013d}-{self.seq:08d}.json"
                data = json.dumps({"writer": self.writer, "rows": rows}, default=_plain)
                await asyncio.to_thread(self.folder.write, name, data)
        except Exception as err:
            self.failures += 1
            logger.warning("record segment not written (%d rows kept): %s", len(rows), err)
            if len(rows) > self.max_unsaved:
                self.lost += len(rows) - self.max_unsaved
                for r in rows[: len(rows) - self.max_unsaved]:
                    self._unwritten.discard(str(r["id"]))
                rows = rows[-self.max_unsaved :]
            self.unsaved = rows
        else:
            self.unsaved = []
            self.written += len(rows)
            ids = {str(r["id"]) for r in rows}
            self._unwritten -= ids
            live = ids - self._taken  # the store took some while the write was on its way
            self._taken -= ids
            if live:
                self._live[name] = live
                self._where.update(dict.fromkeys(live, name))
            elif ids:
                self.done.append(name)
        finally:
            self.settled += len(fresh)
            self._writing = None

    def delivered(self, rows: list[dict[str, Any]]) -> list[str]:
        """The store journaled these rows: the segments now wholly delivered (to delete)."""
        done, self.done = self.done, []
        for r in rows:
            rid = str(r.get("id"))
            name = self._where.pop(rid, None)
            if name is None:
                if rid in self._unwritten:  # not in a segment yet: none needs writing now
                    self._taken.add(rid)
                continue
            ids = self._live[name]
            ids.discard(rid)
            if not ids:
                del self._live[name]
                done.append(name)
        return done

    def forget(self, rows: list[dict[str, Any]]) -> None:
        """Rows the router gave up delivering itself: their segments stay for `collect`."""
        for r in rows:
            name = self._where.pop(str(r.get("id")), None)
            if name is not None:
                self._live.pop(name, None)

    def delete(self, names: list[str]) -> None:
        """Remove delivered segments (blocking I/O: call it off the event loop)."""
        if names:
            self.folder.delete(names)

    def stats(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "segments_written": self.seq - self.failures,
            "rows_written": self.written,
            "segments_live": len(self._live),
            "unsaved": len(self.unsaved) + len(self.pending),
            "lost": self.lost,
            "write_failures": self.failures,
        }


def _plain(value: Any) -> Any:
    """numpy scalars and the like, as JSON numbers or text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def collect(
    state: StateDir,
    ingest: Callable[[list[dict[str, Any]]], Any],
    grace_s: float,
    clock: Callable[[], float] = time.time,
) -> dict[str, int]:
    """Ingest the segments older than `grace_s` that their router has not deleted (it died, or
    could not reach the store), then delete them; how many segments, and how many rows were new
    (`ingest` returns that: it counts a request id once, so a segment read twice, by a store
    that died between its ingest and the delete, counts once). StorageError from `ingest` (the
    journal refused) leaves the rest for the next call."""
    folder = state.child(FOLDER)
    found = {"segments": 0, "rows": 0}
    cutoff = int((clock() - grace_s) * 1000)
    for writer in folder.folders():
        for name in folder.files(writer):
            m = _NAME.match(name)
            if m is None or int(m.group(1)) > cutoff:
                continue
            raw = folder.read(f"{writer}/{name}")
            if raw is not None:
                found["rows"] += int(ingest(json.loads(raw)["rows"]))
            folder.delete([f"{writer}/{name}"])
            found["segments"] += 1
        folder.remove_if_empty(writer)
    return found
