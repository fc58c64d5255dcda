"""The experiment's state as its parts read it (`report`, `durability`): one Protocol, which
`shipyard.ab.experiment.Experiment` satisfies."""

from __future__ import annotations

from typing import Any, Protocol

from shipyard.ab.joins import FeedbackJoin
from shipyard.ab.ledger import ShadowStats, VariantStats
from shipyard.ab.routing import Allocation
from shipyard.config.serving import ServingConfig


class ExperimentState(Protocol):
    cfg: ServingConfig
    identity: str  # the model and its variants' versions, hashed: the state's folder
    versions: dict[str, int]
    # The traffic table.
    weights: dict[str, float]
    shadow: dict[str, float]
    control: str
    deploy_hash: str
    allocation: Allocation
    epoch: int
    epoch_started: float
    config_version: int
    rolled_back: dict[str, str]
    # The ledger and the sequential tests.
    stats: dict[str, VariantStats]
    shadows: dict[str, ShadowStats]
    msprt: dict[str, dict[str, float | None]]
    joins: FeedbackJoin  # the feedback join: outcomes held, unmatched, dropped
    started: float

    def storage_report(self) -> dict[str, Any] | None: ...
    def guardrail_breach(self, name: str) -> str | None: ...
