"""The experiment store deployment: one replica holding the split, statistics and decisions.

A thin shell over `shipyard.ab.experiment.Experiment`. Errors the caller caused are raised as
typed errors (`shipyard.errors`); they reach the router as instances of their own class and the
edge maps them to 4xx.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.settings import AppSettings
from shipyard.ab.experiment import AliasStore, Experiment
from shipyard.config.serving import TrafficUpdate
from shipyard.events import EventLog
from shipyard.registry import Registry

logger = logging.getLogger(__name__)


class ExperimentStore:
    def __init__(self, app: AppSettings, aliases: AliasStore | None = None) -> None:
        """`aliases`: the registry's aliases (default: the app's MLflow registry)."""
        self.experiment = Experiment(
            app.config,
            app.versions,
            state_dir=app.state_dir,
            aliases=aliases or Registry(app.tracking_uri),
            events=EventLog(app.events_path),
        )

    def snapshot(self) -> dict[str, Any]:
        return self.experiment.snapshot()

    def config_version(self) -> int:
        return self.experiment.config_version

    def apply_deploy(self, traffic: dict[str, Any]) -> bool:
        return self.experiment.apply_deploy(traffic)

    def ingest(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.experiment.ingest(records)

    def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        return self.experiment.feedback(request_id, outcome)

    def set_traffic(self, update: dict[str, Any], source: str) -> dict[str, Any]:
        return self.experiment.set_traffic(TrafficUpdate.model_validate(update), source)

    def promote(self, variant: str, source: str) -> dict[str, Any]:
        return self.experiment.promote(variant, source)

    def rollback(self, variant: str, reason: str, source: str) -> dict[str, Any]:
        return self.experiment.rollback(variant, reason, source)

    def report(self) -> dict[str, Any]:
        return self.experiment.report()
