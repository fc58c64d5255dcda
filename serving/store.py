"""The experiment store deployment: one replica holding the split, statistics and decisions.

A thin shell over `shipyard.ab.experiment.Experiment`, which persists under the app's
`state_uri` (journal + snapshots). Errors the caller caused are raised as typed errors
(`shipyard.errors`); they reach the router as instances of their own class and the edge maps
them to 4xx; a write storage refused is a StorageError (503, nothing changed).

Serve runs a replica's sync methods on a thread pool, so one lock serialises every call into the
experiment (it is not thread-safe, and a journal's order must be the order of application).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from serving.settings import AppSettings
from shipyard.ab.experiment import AliasStore, Experiment
from shipyard.config.serving import TrafficUpdate
from shipyard.errors import StaleState
from shipyard.events import EventLog
from shipyard.registry import Registry
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

KV_NAMESPACE = "shipyard"


class Generations:
    """The newest journal position each store has written, kept in Ray's GCS (cluster-wide,
    outliving any one replica): a store that finds older state on its `state_uri` than this
    says was written (a node-local path read on another node) refuses to start."""

    def __init__(self, key: str) -> None:
        from ray.experimental import internal_kv

        self.kv, self.key = internal_kv, key

    def known(self) -> int:
        if not self.kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
            return 0
        raw = self.kv._internal_kv_get(self.key, namespace=KV_NAMESPACE)
        return int(raw) if raw else 0

    def record(self, seq: int) -> None:
        if self.kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
            self.kv._internal_kv_put(self.key, str(seq), overwrite=True, namespace=KV_NAMESPACE)


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
        state = StateDir(app.state_uri)
        self.experiment = Experiment(
            app.config,
            app.versions,
            state=state,
            aliases=aliases or Registry(app.tracking_uri),
            events=EventLog(app.events_path),
        )
        if generations is not None:
            assert self.experiment.state is not None and self.experiment.journal is not None
            gen = generations(self.experiment.state.uri)
            known, found = gen.known(), self.experiment.journal.seq
            if found < known:
                raise StaleState(
                    f"state_uri {app.state_uri!r} holds journal entry {found}, but this app "
                    f"has written up to {known}: this is older state (a node-local state_uri "
                    "read on another node?). Refusing to resume from it; set state_uri to "
                    "object storage (s3://, gs://) on a multi-node cluster."
                )
            self.experiment.on_snapshot = gen.record
            gen.record(found)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.experiment.snapshot()

    def config_version(self) -> int:
        return self.experiment.config_version  # lock-free: the router's probe

    def apply_deploy(self, traffic: dict[str, Any]) -> bool:
        with self._lock:
            return self.experiment.apply_deploy(traffic)

    def ingest(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._lock:
            return self.experiment.ingest(records)

    def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        with self._lock:
            return self.experiment.feedback(request_id, outcome)

    def set_traffic(self, update: dict[str, Any], source: str) -> dict[str, Any]:
        with self._lock:
            return self.experiment.set_traffic(TrafficUpdate.model_validate(update), source)

    def promote(self, variant: str, source: str) -> dict[str, Any]:
        with self._lock:
            return self.experiment.promote(variant, source)

    def rollback(self, variant: str, reason: str, source: str) -> dict[str, Any]:
        with self._lock:
            return self.experiment.rollback(variant, reason, source)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return self.experiment.report()
