"""The serving app's variants file: which model versions are live, their traffic and guardrails.

The same structure is the `args` of the app in a Serve config file (`serve deploy`), and the file
that `serve run serving.app:build_app config=FILE` reads. Weights and shadow shares are also the
router's `user_config`, so a `serve deploy` that changes only them reconfigures replicas in place.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from shipyard.config.base import Strict, load_yaml, parse_config
from shipyard.config.drift import DriftSettings
from shipyard.errors import ConfigError

NAME_PATTERN = r"^[a-z][a-z0-9_\-]{0,39}$"
Trigger = Literal["features", "prediction", "quality", "performance"]
DRIFT_ACTOR_TRIGGERS = {"features", "prediction", "quality"}


# A relative share of live traffic: finite and bounded, so that sums of weights stay finite.
Weight = Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)]


class Autoscaling(Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 scales to zero).")
    max_replicas: PositiveInt = Field(2, description="Most replicas.")
    target_ongoing_requests: PositiveFloat = Field(
        8.0, description="Ongoing requests per replica the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be greater than or equal to "
                f"min_replicas ({self.min_replicas})"
            )
        return self


class Faults(Strict):
    """Fault injection for canary drills: prove that guardrails and shadows behave."""

    error_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of requests this variant fails (HTTP 503)."
    )
    latency_ms: NonNegativeFloat = Field(0.0, description="Delay added to every request (ms).")


SPREAD = (
    "Serve's max_replicas_per_node: 1 puts every replica on a node of its own, so a lost node "
    "takes one of them, not all (a replica with no node left for it waits). Unset: Serve places "
    "them, several per node when it likes."
)


class Variant(Strict):
    name: str = Field(description="Variant name, unique in the app.", pattern=NAME_PATTERN)
    version: int | str = Field(
        description="Registry version number or alias (champion, challenger, ...). Aliases are "
        "resolved once, at deploy time, so a replica restart never loads a different version."
    )
    weight: Weight = Field(
        0.0, description="Share of live traffic (relative to the other weights, 0 to 1e6)."
    )
    shadow: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="Percent of live traffic mirrored to this variant; its outputs are logged, "
        "never returned. A shadow variant has weight 0.",
    )
    num_replicas: PositiveInt | None = Field(
        None, description="Fixed replica count; leave unset to autoscale."
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Used when num_replicas is unset."
    )
    max_replicas_per_node: PositiveInt | None = Field(None, description=SPREAD)
    num_cpus: NonNegativeFloat = Field(0.5, description="CPUs reserved per replica.")
    onnx_threads: PositiveInt = Field(1, description="ONNX Runtime intra-op threads.")
    max_batch_size: PositiveInt = Field(
        256, description="Most records per ONNX Runtime call across concurrent requests."
    )
    batch_wait_ms: NonNegativeFloat = Field(
        0.0,
        description="How long a batch waits for more requests (ms). 0: batch whatever is "
        "queued at that moment, so a lone request never waits.",
    )
    faults: Faults = Field(default_factory=Faults, description="Fault injection (drills only).")

    @model_validator(mode="after")
    def _shadow_or_live(self) -> Variant:
        if self.shadow > 0 and self.weight > 0:
            raise ValueError(
                f"variant {self.name!r} has weight {self.weight} and shadow {self.shadow}: a "
                "shadow variant takes no live traffic (set one of them to 0)"
            )
        return self


class Guardrails(Strict):
    min_requests: PositiveInt = Field(
        200, description="Requests a treatment must serve before guardrails judge it."
    )
    max_error_rate_delta: NonNegativeFloat = Field(
        0.02, description="Roll back when treatment error rate exceeds control's by more than this."
    )
    max_p99_ratio: PositiveFloat = Field(
        2.0, description="Roll back when treatment p99 latency exceeds control's by this factor..."
    )
    min_p99_delta_ms: NonNegativeFloat = Field(
        25.0, description="...and by at least this many milliseconds (ignores sub-ms jitter)."
    )
    min_latency_samples: PositiveInt = Field(
        1000,
        description="Requests per arm before p99 is judged: a p99 from fewer samples is "
        "little more than the maximum, and one slow request would roll a canary back.",
    )
    enabled: bool = Field(True, description="Turn automatic rollback on or off.")


class ABSection(Strict):
    metric: Literal["conversion", "value"] = Field(
        "conversion",
        description="Outcome kind from /feedback: conversion (0/1) or value (any number); both "
        "are analysed per key with the delta method.",
    )
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level of the A/B tests.")
    min_outcomes: PositiveInt = Field(
        100, description="Outcomes per arm before a recommendation other than keep running."
    )
    msprt_tau: PositiveFloat | None = Field(
        None,
        description="Mixing scale of the mSPRT (absolute effect size). Unset: 0.1 standard "
        "deviations of the outcome, fixed when both arms first reach min_outcomes.",
    )
    srm_p: float = Field(
        0.001, gt=0.0, lt=0.1, description="Flag sample-ratio mismatch below this."
    )
    higher_is_better: bool = Field(
        True, description="Whether a larger outcome is an improvement (conversion, revenue)."
    )
    durable_answers: bool = Field(
        True,
        description="Hold each /predict answer until its A/B record is written to the router's "
        "own segment under state_uri (group commit: one write serves every request waiting "
        "then; ~1 write's latency added). A router killed outright then loses no answered "
        "request: the store ingests the segments it left. Off: records reach the store every "
        "0.2 s from memory, and a killed router loses those in flight.",
    )
    recover_after_s: PositiveFloat = Field(
        10.0,
        description="A segment older than this that its router has not deleted (the router "
        "died, or could not reach the store) is ingested by the store.",
    )


class Limits(Strict):
    max_body_bytes: PositiveInt = Field(
        1_048_576, description="Largest request body accepted (HTTP 413 above)."
    )
    max_instances: PositiveInt = Field(
        1000, description="Most records in one /predict request (HTTP 413 above)."
    )
    timeout_s: PositiveFloat = Field(10.0, description="Per-request model timeout (HTTP 504).")
    fallback_after_s: PositiveFloat = Field(
        5.0,
        description="A treatment that has not answered a request within this (its node lost, "
        "its replica hung) is given up on: control answers, the request counts as the "
        "treatment's failure, and the treatment leaves routing until it answers the router's "
        "health probe. Ray takes 10-15 s to declare a lost node dead; this does not wait for it. "
        "Capped at timeout_s.",
    )
    probe_timeout_s: PositiveFloat = Field(
        2.0,
        description="How long the router waits for the experiment store's or a drift actor's "
        "health answer before treating it as away (routes that need it then answer 503 with "
        "Retry-After at once, and routing goes on from the router's table).",
    )
    max_pending_feedback: PositiveInt = Field(
        10_000,
        description="Outcomes held for request ids not seen yet (they may still be in a "
        "router's buffer); beyond this the oldest are dropped and counted.",
    )


class DriftSection(DriftSettings):
    """Drift actors: one per variant, fed by its replicas off the request path. The statistics'
    settings are `shipyard.config.drift.DriftSettings` (one definition, one set of defaults);
    this adds how replicas feed the actors and how the actors keep their state."""

    enabled: bool = Field(True, description="Run a drift actor for every variant.")
    batch_rows: PositiveInt = Field(
        5000, description="Replicas send their buffered rows once they hold this many..."
    )
    flush_interval_s: PositiveFloat = Field(1.0, description="...or this often.")
    max_buffer_rows: PositiveInt = Field(
        50_000,
        description="Rows a replica holds for a slow or dead drift actor before it drops "
        "(and counts) them; predictions never wait.",
    )
    checkpoint_s: PositiveFloat = Field(
        5.0, description="How often a drift actor saves its state (also at every window)."
    )

    def settings(self) -> DriftSettings:
        """Only the statistics' part (what `DriftMonitor` judges with)."""
        return DriftSettings(**self.model_dump(include=set(DriftSettings.model_fields)))


class ReviewSection(Strict):
    """Review queue: uncertain predictions sampled for a person to label (binary models)."""

    enabled: bool = Field(True, description="Sample near-threshold predictions into the queue.")
    band: float = Field(
        0.05,
        gt=0.0,
        le=0.5,
        description="A prediction is near the threshold when |probability - 0.5| <= band.",
    )
    sample_rate: float = Field(
        0.05, gt=0.0, le=1.0, description="Share of near-threshold predictions queued."
    )
    max_rows: PositiveInt = Field(
        10_000, description="Unlabelled rows the queue holds; beyond this, sampling pauses."
    )


class PerformanceSection(Strict):
    """Performance drift: /feedback outcomes scored as labels against the evaluation report."""

    outcome_is_label: bool = Field(
        False,
        description="Set true when /feedback outcomes are the model's label (e.g. churned 0/1): "
        "the rolling metric is then compared with the version's evaluation report. Off when "
        "outcomes are a business metric unrelated to the label (conversion, revenue).",
    )
    window: PositiveInt = Field(1000, description="Labelled predictions in the rolling window.")
    min_outcomes: PositiveInt = Field(
        200, description="Labelled predictions (with both classes) before the metric is judged."
    )
    max_drop: NonNegativeFloat = Field(
        0.05,
        description="Drift when the rolling metric is worse than the evaluation report's by at "
        "least this (AUC for binary, RMSE relative to the reference for regression)...",
    )
    alpha: float = Field(
        0.01, gt=0.0, lt=0.5, description="...and the drop is significant (one-sided) at alpha."
    )


class RetrainSection(Strict):
    """What `on_drift: retrain` submits, and how its version reaches live traffic."""

    job_config: str | None = Field(
        None,
        description="Training job config (YAML) the job runs with: absolute, relative to the "
        "working directory, or to the installed project (jobs/configs/demo.yaml).",
    )
    data: str | None = Field(
        None, description="Fresh data for the job (its data.path); the job config's if unset."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Job config overrides (`--set KEY=VALUE`), e.g. {train.num_workers: 4}.",
    )
    address: str | None = Field(
        None,
        description="Ray job submission address (http://HEAD:8265); the cluster serving runs "
        "on if unset.",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Runtime environment of the job (Ray's format)."
    )
    require_approval: bool = Field(
        True,
        description="A person approves (POST /retrain/<id>/approve or `shipyard retrain "
        "approve`) before the new version takes any live traffic.",
    )
    canary_weight: PositiveFloat = Field(
        5.0, description="Weight the approved version joins with, as a new variant."
    )
    cooldown_s: NonNegativeFloat = Field(
        3600.0, description="Least time between two retraining jobs."
    )
    triggers: list[Trigger] = Field(
        default_factory=lambda: list[Trigger](["features", "prediction", "performance"]),
        description="Drift kinds that retrain: features (input distributions), prediction "
        "(output distribution), quality (missing, unseen, type errors: usually an upstream "
        "bug, so alert only by default), performance (from /feedback).",
    )
    poll_s: PositiveFloat = Field(5.0, description="How often the job's status is checked.")


class CaptureSection(Strict):
    """Request capture: what was served, as Parquet under state_uri (`shipyard.monitoring.capture`)."""

    enabled: bool = Field(True, description="Capture served requests and feedback.")
    sample_rate: float = Field(
        1.0, gt=0, le=1, description="Share of request ids captured (with their feedback)."
    )
    file_s: PositiveFloat = Field(60.0, description="A file is written at least this often.")
    file_rows: PositiveInt = Field(
        20_000, description="A file is written as soon as this many rows are buffered."
    )
    max_buffered_rows: PositiveInt = Field(
        200_000,
        description="Rows held while storage is slow or away; beyond this, rows are dropped "
        "and counted (GET /ab -> capture), never delaying a prediction.",
    )


class ServingConfig(Strict):
    model: str = Field(description="Registered model name.", min_length=1)
    variants: list[Variant] = Field(description="Live and shadow variants.", min_length=1)
    control: str | None = Field(
        None,
        description="Variant that A/B lifts are measured against; the first live one if unset.",
    )
    salt: str = Field(
        "", description="Salt of the sticky key hash; change it to reshuffle every key."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; MLFLOW_TRACKING_URI or the local store."
    )
    state_uri: str | None = Field(
        None,
        description="Where everything the app persists lives (split, statistics and their "
        "journal, drift state, retrain requests): a local path or s3://bucket/prefix, "
        "gs://bucket/prefix. Unset: $SHIPYARD_STATE_URI/<model>, else "
        "$SHIPYARD_HOME/serving/<model>. On a cluster, an object store.",
    )
    admin_token_env: str = Field(
        "SHIPYARD_ADMIN_TOKEN",
        description="Environment variable holding the bearer token of admin routes; admin routes "
        "are off when it is unset.",
    )
    api_keys_env: str = Field(
        "SHIPYARD_API_KEYS",
        description="Environment variable holding the API keys (comma-separated) that data "
        "routes need (/predict, /explain, /feedback and the reports) as the X-API-Key header; "
        "open when it is unset (a laptop). On a cluster, set it from a secret.",
    )
    router_replicas: PositiveInt = Field(1, description="Router (ingress) replicas.")
    router_max_replicas_per_node: PositiveInt | None = Field(None, description=SPREAD)
    placement: dict[str, str] | None = Field(
        None,
        description="Node labels (Ray's label selector) that the router, the experiment store, "
        "the drift actors and the retrain coordinator need, e.g. {shipyard.io/capacity: "
        "on-demand}: they hold state whose loss costs a restart, so they stay off spot nodes "
        "(variants hold none and run anywhere). Unset: $SHIPYARD_SERVING_NODES "
        "(key=value,...; the cluster configs set it), else any node.",
    )
    guardrails: Guardrails = Field(default_factory=Guardrails, description="Automatic rollback.")
    ab: ABSection = Field(default_factory=ABSection, description="A/B statistics.")
    limits: Limits = Field(default_factory=Limits, description="Request limits.")
    drift: DriftSection = Field(
        default_factory=DriftSection, description="Drift actors (inputs and outputs)."
    )
    performance: PerformanceSection = Field(
        default_factory=PerformanceSection, description="Performance drift from /feedback."
    )
    capture: CaptureSection = Field(
        default_factory=CaptureSection, description="Request capture (Parquet under state_uri)."
    )
    review: ReviewSection = Field(
        default_factory=ReviewSection, description="Review queue of uncertain predictions."
    )
    on_drift: Literal["alert", "retrain"] = Field(
        "alert",
        description="alert: events, webhook and gauges only. retrain: also submit a training "
        "job (see retrain), whose version joins live traffic as a canary once approved.",
    )
    retrain: RetrainSection = Field(
        default_factory=RetrainSection, description="Retraining on drift (on_drift: retrain)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {dup}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a weight > 0 (all weights are 0)")
        if self.control is not None:
            if self.control not in names:
                raise ValueError(f"control {self.control!r} is not a variant; variants: {names}")
            if self.variant(self.control).shadow > 0:
                raise ValueError(f"control {self.control!r} is a shadow variant")
        if self.on_drift == "retrain":
            if self.retrain.job_config is None:
                raise ValueError(
                    "on_drift is 'retrain' but retrain.job_config is unset: name the training "
                    "job config (e.g. jobs/configs/demo.yaml), or set on_drift: alert"
                )
            if not self.drift.enabled and set(self.retrain.triggers) <= DRIFT_ACTOR_TRIGGERS:
                raise ValueError(
                    "on_drift is 'retrain' but drift.enabled is false and retrain.triggers "
                    f"{self.retrain.triggers} all come from the drift actors"
                )
        return self

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def control_name(self) -> str:
        if self.control:
            return self.control
        return next(v.name for v in self.variants if v.weight > 0)

    def traffic(self) -> dict[str, Any]:
        """The router's user_config: what `serve deploy` may change without restarting."""
        return {
            "weights": {v.name: v.weight for v in self.variants},
            "shadow": {v.name: v.shadow for v in self.variants if v.shadow > 0},
            "control": self.control_name,
        }


def parse_serving_config(raw: Any, source: str = "<args>") -> ServingConfig:
    cfg: ServingConfig = parse_config(raw, ServingConfig, source=source)
    return cfg


def load_serving_args(args: dict[str, Any]) -> ServingConfig:
    """Builder args: either `{config: FILE}` (serve run ... config=FILE) or the structure inline."""
    if not isinstance(args, dict):
        raise ConfigError(f"application args must be a mapping, got {type(args).__name__}")
    if "config" in args:
        extra = sorted(set(args) - {"config"})
        if extra:
            raise ConfigError(f"args: give either config=FILE or the variants inline, not {extra}")
        path = os.fspath(args["config"])
        return parse_serving_config(load_yaml(path), source=path)
    return parse_serving_config(args)


class TrafficUpdate(Strict):
    """Body of PUT /variants (and the router's user_config): new weights and shadow shares."""

    weights: dict[str, Weight] = Field(
        default_factory=dict,
        description="Variant name -> weight (0 to 1e6); unlisted variants keep theirs.",
    )
    shadow: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Variant name -> percent mirrored (0-100)."
    )
    control: str | None = Field(None, description="New control variant.", max_length=200)

    @model_validator(mode="after")
    def _ranges(self) -> TrafficUpdate:
        for name, share in self.shadow.items():
            if not 0 <= share <= 100:
                raise ValueError(f"shadow[{name!r}] = {share} must be between 0 and 100")
        return self


def safe_name(name: str) -> str:
    """A string usable in a deployment name."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)
