"""The experiment store deployment: one replica holding the split, statistics and decisions.

A thin shell over `shipyard.experiment.Experiment`. Errors the caller caused come back as
`{"error", "status"}` values rather than exceptions, so the router maps them to 4xx exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shipyard.errors import ShipyardError
from shipyard.events import EventLog
from shipyard.experiment import Experiment
from shipyard.registry import Registry
from shipyard.serving_config import ServingConfig, TrafficUpdate

logger = logging.getLogger(__name__)


def _answer(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    try:
        return {"ok": fn(*args)}
    except ShipyardError as err:
        return {"error": err.message, "status": err.http_status}


class ExperimentStore:
    def __init__(
        self,
        config: dict[str, Any],
        versions: dict[str, int],
        tracking_uri: str | None,
        state_dir: str,
        events_path: str,
    ) -> None:
        cfg = ServingConfig.model_validate(config)
        self.experiment = Experiment(
            cfg,
            versions,
            state_dir=state_dir,
            aliases=Registry(tracking_uri),
            events=EventLog(events_path),
        )

    def snapshot(self) -> dict[str, Any]:
        return self.experiment.snapshot()

    def config_version(self) -> int:
        return self.experiment.config_version

    def apply_deploy(self, traffic: dict[str, Any]) -> dict[str, Any]:
        return _answer(self.experiment.apply_deploy, traffic)

    def ingest(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.experiment.ingest(records)

    def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        return _answer(self.experiment.feedback, request_id, outcome)

    def set_traffic(self, update: dict[str, Any], source: str) -> dict[str, Any]:
        return _answer(
            lambda: self.experiment.set_traffic(TrafficUpdate.model_validate(update), source)
        )

    def promote(self, variant: str, source: str) -> dict[str, Any]:
        return _answer(self.experiment.promote, variant, source)

    def rollback(self, variant: str, reason: str, source: str) -> dict[str, Any]:
        return _answer(self.experiment.rollback, variant, reason, source)

    def report(self) -> dict[str, Any]:
        return self.experiment.report()
