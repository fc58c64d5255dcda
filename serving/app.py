"""Build the serving application from a variants file: `serve run serving.app:build_app config=FILE`.

Every variant's version is resolved (aliases pinned to numbers) and its bundle verified against
its checksums here, before anything is deployed: a missing or corrupt version fails the build
with a clear error, and a running app keeps serving what it had. Every deployment is bound with
one `AppSettings`.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from ray import serve
from ray.serve import Application

from serving.drift import DriftActor
from serving.model import VariantModel
from serving.retrain import RetrainCoordinator
from serving.router import Ingress
from serving.settings import AppSettings
from serving.store import ExperimentStore
from shipyard.config.serving import ServingConfig, Variant, load_serving_args, safe_name
from shipyard.contract import SERVING_NODES_ENV, STATE_URI_ENV, project_root
from shipyard.errors import ConfigError
from shipyard.monitoring.retrain import resolve_job_config
from shipyard.registry import Registry, resolve_tracking_uri, shipyard_home
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)


def resolve_versions(cfg: ServingConfig, registry: Registry) -> dict[str, int]:
    """Variant -> version number; every bundle downloaded once and its checksums verified."""
    versions: dict[str, int] = {}
    for v in cfg.variants:
        number = int(registry.get_version(cfg.model, v.version).version)  # ModelNotFound
        if number not in versions.values():  # variants may share a version: verify it once
            path = registry.download(cfg.model, number)  # ArtifactError on a mismatch
            shutil.rmtree(path.parent, ignore_errors=True)
        versions[v.name] = number
    return versions


def placement(cfg: ServingConfig) -> dict[str, Any]:
    """Ray actor options that keep the app's stateful parts on the labelled nodes (the config's
    `placement`, else $SHIPYARD_SERVING_NODES as `key=value,...`; none: any node)."""
    labels = cfg.placement
    if labels is None:
        raw = os.environ.get(SERVING_NODES_ENV, "").strip()
        pairs = [p.partition("=") for p in raw.split(",") if p.strip()]
        if any(not k.strip() or not sep or not v.strip() for k, sep, v in pairs):
            raise ConfigError(
                f"{SERVING_NODES_ENV}={raw!r}: expected key=value[,key=value...], e.g. "
                "shipyard.io/capacity=on-demand"
            )
        labels = {k.strip(): v.strip() for k, _, v in pairs}
    return {"label_selector": dict(labels)} if labels else {}


def _spread(per_node: int | None) -> dict[str, Any]:
    return {"max_replicas_per_node": per_node} if per_node is not None else {}


def _scaling(v: Variant) -> dict[str, Any]:
    if v.num_replicas is not None:
        return {"num_replicas": v.num_replicas}
    a = v.autoscaling
    return {
        "num_replicas": "auto",
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        },
    }


def app_settings(cfg: ServingConfig) -> AppSettings:
    """Resolve and verify the versions, and decide where state and events go."""
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    home = shipyard_home()
    local = home / "serving" / safe_name(cfg.model)
    uri = cfg.state_uri
    if uri is None and os.environ.get(STATE_URI_ENV):
        uri = f"{os.environ[STATE_URI_ENV].rstrip('/')}/{safe_name(cfg.model)}"
    state = StateDir(uri or local)  # ConfigError naming state_uri if it cannot be opened
    state.files()  # reachable now (StorageError, a clear 503-class error, before any deploy)
    return AppSettings(
        config=cfg,
        versions=resolve_versions(cfg, Registry(tracking_uri)),
        tracking_uri=tracking_uri,
        state_uri=state.uri,
        review_dir=str(state.local_path() or local),
        # On a disk: the machine's one event log; on an object store: beside the app's state.
        events_path=str(home / "events.jsonl") if state.local else f"{state.uri}/events",
    )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / `serve deploy` (args: config=FILE or inline)."""
    cfg = load_serving_args(args)
    if cfg.on_drift == "retrain" and cfg.retrain.job_config:  # refuse a missing file now
        resolve_job_config(cfg.retrain.job_config, project_root())
    app = app_settings(cfg)
    stateful = {"num_cpus": 0, **placement(cfg)}
    one: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": stateful}
    store = serve.deployment(name="experiment", **one)(ExperimentStore).bind(app)
    retrain = None
    if cfg.on_drift == "retrain":
        retrain = serve.deployment(name="retrain", health_check_period_s=5, **one)(
            RetrainCoordinator
        ).bind(app, store)
    drifts = {
        v.name: serve.deployment(name=f"drift-{v.name}", **one)(DriftActor).bind(
            app, v.name, retrain=retrain
        )
        for v in cfg.variants
        if cfg.drift.enabled
    }
    models = {
        v.name: serve.deployment(
            name=f"variant-{v.name}",
            ray_actor_options={"num_cpus": v.num_cpus},
            max_ongoing_requests=max(32, 2 * v.max_batch_size),
            **_scaling(v),
            **_spread(v.max_replicas_per_node),
        )(VariantModel).bind(app, v.name, drift=drifts.get(v.name))
        for v in cfg.variants
    }
    return serve.deployment(
        name="router",
        num_replicas=cfg.router_replicas,
        user_config=cfg.traffic(),
        ray_actor_options=stateful,
        max_ongoing_requests=1000,
        **_spread(cfg.router_max_replicas_per_node),
    )(Ingress).bind(app, models, store, drifts, retrain)
