"""The experiment store deployment: one replica holding the split, statistics and decisions.

A thin shell over `shipyard.ab.experiment.Experiment`, which persists under the app's
`state_uri` (journal + snapshots). Errors the caller caused are raised as typed errors
(`shipyard.errors`); they reach the router as instances of their own class and the edge maps
them to 4xx; a write storage refused is a StorageError (503, nothing changed).

Every call into the experiment runs on a worker thread (storage I/O must not block the replica's
event loop) under one lock: the experiment is not thread-safe, and the journal's order must be
the order of application.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from serving.generations import Generations
from serving.settings import AppSettings
from shipyard.ab import segments
from shipyard.ab.aliases import AliasStore
from shipyard.ab.experiment import Experiment
from shipyard.config.serving import TrafficUpdate
from shipyard.errors import Fenced, StaleState
from shipyard.events import EventLog
from shipyard.registry import Registry
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ExperimentStore:
    def __init__(
        self,
        app: AppSettings,
        aliases: AliasStore | None = None,
        generations: Callable[[str], Generations] | None = Generations,
    ) -> None:
        """`aliases`: the registry's aliases (default: the app's MLflow registry);
        `generations`: where written positions are recorded (None: not checked)."""
        self._lock = threading.Lock()
        state = self.state = StateDir(app.state_uri)
        events = EventLog(app.events_path)
        self.experiment = Experiment(
            app.config,
            app.versions,
            state=state,
            aliases=aliases or Registry(app.tracking_uri),
            events=events,
        )
        events.resend_undelivered()  # what a store that died had not posted to the webhook
        if generations is not None:
            durable = self.experiment.durable
            assert durable is not None
            gen = generations(durable.state.uri)
            known, found = gen.known(), durable.journal.seq
            if found < known:
                raise StaleState(
                    f"state_uri {app.state_uri!r} holds journal entry {found}, but this app "
                    f"has written up to {known}: this is older state (a node-local state_uri "
                    "read on another node?). Refusing to resume from it; set state_uri to "
                    "object storage (s3://, gs://) on a multi-node cluster."
                )
            durable.on_snapshot = gen.record
            gen.record(found)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Storage I/O (an object store: tens of ms a write) runs on a worker thread, so the
        replica's event loop stays free to answer the router's probe (`config_version`)."""
        return await asyncio.to_thread(self._locked, fn, *args)

    def check_health(self) -> None:
        """Serve's health check: a replica whose journal another writer has taken (two alive at
        once) is fenced and stops writing; failing this check has Serve replace it, and the new
        replica resumes from what storage holds."""
        durable = self.experiment.durable
        if durable is not None and durable.journal.fenced:
            raise Fenced(f"{durable.state.uri}: another store replica writes this journal")

    async def snapshot(self) -> dict[str, Any]:
        return await self._run(self.experiment.snapshot)

    def config_version(self) -> int:
        return self.experiment.config_version  # lock-free: the router's probe

    async def apply_deploy(self, traffic: dict[str, Any]) -> bool:
        return await self._run(self.experiment.apply_deploy, traffic)

    async def ingest(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._run(self.experiment.ingest, records)

    async def collect(self, grace_s: float) -> dict[str, int]:
        """Ingest the record segments routers left behind (`shipyard.ab.segments`)."""
        return await self._run(segments.collect, self.state, self.experiment.recover, grace_s)

    async def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        return await self._run(self.experiment.feedback, request_id, outcome)

    async def set_traffic(self, update: dict[str, Any], source: str) -> dict[str, Any]:
        change = TrafficUpdate.model_validate(update)
        return await self._run(self.experiment.set_traffic, change, source)

    async def promote(self, variant: str, source: str) -> dict[str, Any]:
        return await self._run(self.experiment.promote, variant, source)

    async def rollback(self, variant: str, reason: str, source: str) -> dict[str, Any]:
        return await self._run(self.experiment.rollback, variant, reason, source)

    async def report(self) -> dict[str, Any]:
        return await self._run(self.experiment.report)
