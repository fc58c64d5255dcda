"""The retraining coordinator: one replica per app, deployed when `on_drift: retrain`.

Drift actors tell it when a drift episode starts. It submits a `jobs.train` run through Ray's
job submission API (on the retrain section's fresh data, registered under the serving model),
follows the job, and holds the new version until a person approves it (POST
/retrain/<id>/approve, or `shipyard retrain approve <id>`). Approval redeploys the app the way
`serve deploy` does, with the new version as a variant at `retrain.canary_weight`; the canary
guardrails then watch it like any other treatment. The decision logic is
`shipyard.monitoring.retrain.Retrainer`; this class adds the job API, the Serve API and a poll loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from serving.settings import AppSettings
from shipyard.config.serving import ServingConfig
from shipyard.contract import TRIGGER_ENV, parse_result, project_root
from shipyard.errors import DeployFailed, ShipyardError
from shipyard.events import EventLog
from shipyard.monitoring.retrain import (
    Retrainer,
    canary_name,
    job_entrypoint,
    resolve_job_config,
    with_canary,
)
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
INTERRUPTED_DEPLOY_S = 600.0


class Jobs(Protocol):
    def submit(self, entrypoint: str, submission_id: str, runtime_env: dict[str, Any]) -> None: ...
    def status(self, submission_id: str) -> tuple[str, str]: ...
    def logs(self, submission_id: str) -> str: ...
    def stop(self, submission_id: str) -> None: ...


class Deployer(Protocol):
    def current(self) -> dict[str, Any]: ...
    def deploy(self, config: dict[str, Any]) -> None: ...


def _dashboard_url(address: str | None) -> str:
    """The job/Serve REST address: as configured, or that of the cluster this replica is on."""
    if address:
        return address
    import ray
    from ray.dashboard.utils import ray_address_to_api_server_url

    return str(ray_address_to_api_server_url(ray.get_runtime_context().gcs_address))


class RayJobs:
    """Ray's job submission API (the same one `ray job submit` uses)."""

    def __init__(self, address: str | None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(_dashboard_url(address))

    def submit(self, entrypoint: str, submission_id: str, runtime_env: dict[str, Any]) -> None:
        self.client.submit_job(
            entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env
        )

    def status(self, submission_id: str) -> tuple[str, str]:
        info = self.client.get_job_info(submission_id)
        return str(info.status.value), info.message or ""

    def logs(self, submission_id: str) -> str:
        return str(self.client.get_job_logs(submission_id))

    def stop(self, submission_id: str) -> None:
        self.client.stop_job(submission_id)


class ServeDeployer:
    """Serve's declarative API (what `serve deploy` calls): read the running config, apply a new
    one. Serve replaces replicas with a rolling update, so the app keeps serving throughout."""

    def __init__(self, app_name: str, address: str | None = None) -> None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        self.app_name = app_name
        self.client = ServeSubmissionClient(_dashboard_url(address))

    def current(self) -> dict[str, Any]:
        details = self.client.get_serve_details()
        apps = details.get("applications", {})
        mine = apps.get(self.app_name, {}).get("deployed_app_config")
        if mine is None:
            raise ShipyardError(
                f"app {self.app_name!r} was not deployed from a config (serve run or the Python "
                "API): approval redeploys it the way `serve deploy` does, so deploy it with "
                "`serve deploy` (see docs/serving.md), or add the version to the variants file yourself"
            )
        config: dict[str, Any] = {
            "applications": [
                a["deployed_app_config"] for a in apps.values() if a.get("deployed_app_config")
            ]
        }
        for key in ("http_options", "proxy_location", "grpc_options"):
            if details.get(key) is not None:
                config[key] = details[key]
        return config

    def deploy(self, config: dict[str, Any]) -> None:
        self.client.deploy_applications(config)


class RetrainCoordinator:
    def __init__(
        self,
        app: AppSettings,
        store: Any = None,
        jobs: Jobs | None = None,
        deployer: Deployer | None = None,
        python: str = sys.executable,
    ) -> None:
        """`store`: the experiment store (a handle); `jobs` and `deployer` default to Ray's job
        submission and Serve's REST API, created on first use."""
        self.cfg = app.config
        self.section = self.cfg.retrain
        self.versions = dict(app.versions)
        self.state = StateDir(app.state_uri)
        self.retrainer = Retrainer(
            self.cfg.model, self.section, self.state, enabled=self.cfg.on_drift == "retrain"
        )
        self.events = EventLog(app.events_path)
        self.store = store
        self._jobs, self._deployer = jobs, deployer
        self.python = python
        self.job_config = (
            resolve_job_config(self.section.job_config, project_root())
            if self.section.job_config
            else None
        )
        self._poll_task: asyncio.Task[None] | None = None
        self._reconcile()

    # -- collaborators (created on first use: they need a running Ray) --
    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            self._jobs = RayJobs(self.section.address)
        return self._jobs

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            from ray import serve

            self._deployer = ServeDeployer(serve.get_replica_context().app_name)
        return self._deployer

    def _emit(self, kind: str, r: dict[str, Any], **extra: Any) -> None:
        self.events.emit(
            kind, model=self.cfg.model, request=r["id"], status=r["status"],
            version=r.get("version"), submission_id=r.get("submission_id"), **extra,
        )  # fmt: skip

    def _reconcile(self) -> None:
        """After a (re)start: a request being deployed is live once its variant is in this app."""
        for r in self.retrainer.requests:
            if r["status"] != "deploying" or r["version"] is None:
                continue
            name = canary_name(r["version"])
            if self.versions.get(name) == r["version"]:
                self.retrainer.deployed(r["id"], name)
                self._emit("retrain_live", r, variant=name, weight=self.section.canary_weight)
            elif time.time() - (r["decided_at"] or 0) > INTERRUPTED_DEPLOY_S:
                self.retrainer.deploy_failed(r["id"], "interrupted; approve it again")

    # -- drift --
    async def on_drift(self, trigger: dict[str, Any]) -> dict[str, Any]:
        """A drift episode started (from a drift actor): submit a job if the policy says so."""
        self._ensure_poller()
        request, why = self.retrainer.consider(trigger)
        if request is None:
            logger.info("drift in %s: no retraining (%s)", trigger.get("variant"), why)
            return {"submitted": False, "reason": why}
        env = dict(self.section.runtime_env)
        env["env_vars"] = {
            **env.get("env_vars", {}),
            TRIGGER_ENV: json.dumps({"kind": "drift", "request": request["id"], **trigger}),
        }
        assert self.job_config is not None  # the config validator requires it for retrain
        entrypoint = job_entrypoint(self.python, self.cfg.model, self.section, self.job_config)
        try:
            await asyncio.to_thread(self.jobs.submit, entrypoint, request["submission_id"], env)
        except Exception as err:
            self.retrainer.submit_failed(request["id"], repr(err))
            self._emit("retrain_failed", request, error=repr(err)[:500])
            return {"submitted": False, "reason": f"submission failed: {err!r}"}
        self.retrainer.submitted(request["id"])
        self._emit("retrain_submitted", request, trigger=trigger, entrypoint=entrypoint)
        return {"submitted": True, "request": request}

    # -- following the job --
    def _ensure_poller(self) -> None:
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the dashboard may be restarting: try again next round
                logger.exception("retrain poll failed")
            await asyncio.sleep(self.section.poll_s)

    async def poll(self) -> None:
        for r in list(self.retrainer.requests):
            if r["status"] != "running":
                continue
            status, message = await asyncio.to_thread(self.jobs.status, r["submission_id"])
            if status not in TERMINAL:
                continue
            logs = await asyncio.to_thread(self.jobs.logs, r["submission_id"])
            done = self.retrainer.job_finished(r["id"], status, parse_result(logs), message)
            if done is None:  # rejected meanwhile, or already taken by another poll
                continue
            r = done
            kind = {"awaiting_approval": "retrain_awaiting_approval", "deploying": "retrain_approved",
                    "gates_failed": "retrain_gates_failed"}.get(r["status"], "retrain_failed")  # fmt: skip
            self._emit(kind, r, reason=r.get("reason"), error=r.get("error"))
            if r["status"] == "deploying":
                await self._deploy(r)

    async def check_health(self) -> None:
        """Serve calls this every few seconds: it keeps the poll loop going after a restart."""
        if self.retrainer.active() is not None:
            self._ensure_poller()

    # -- a person --
    def report(self) -> dict[str, Any]:
        return self.retrainer.report()

    async def approve(self, request_id: str, by: str) -> dict[str, Any]:
        r = self.retrainer.approve(request_id, by)  # RetrainNotFound, RetrainConflict
        self._emit("retrain_approved", r, by=by)
        return await self._deploy(r)

    async def reject(self, request_id: str, by: str, reason: str) -> dict[str, Any]:
        r = self.retrainer.reject(request_id, by, reason)  # RetrainNotFound, RetrainConflict
        if r["submission_id"] and r["version"] is None:  # still running: no point finishing it
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.jobs.stop, r["submission_id"])
        self._emit("retrain_rejected", r, by=by, reason=reason)
        return r

    async def _deploy(self, r: dict[str, Any]) -> dict[str, Any]:
        """Redeploy the app with the approved version as a canary; on any failure the request
        goes back to awaiting_approval and live traffic stays as it was."""
        try:
            traffic = await self.store.snapshot.remote() if self.store is not None else {}
            config = await asyncio.to_thread(self.deployer.current)
            app = next(
                a for a in config["applications"]
                if a.get("import_path", "").endswith("build_app")
                and _args(a).get("model") == self.cfg.model
            )  # fmt: skip
            args = with_canary(
                _args(app), traffic, r["version"], self.section.canary_weight, self.versions
            )
            new_cfg = ServingConfig.model_validate(args)  # refuse before touching anything
            app["args"] = args
            for d in app.get("deployments", []):  # a router user_config override would win
                if d.get("name") == "router" and "user_config" in d:
                    d["user_config"] = new_cfg.traffic()
            rel = f"retrain/{r['id']}-serve-config.yaml"  # what was deployed, for a person
            self.state.write(rel, yaml.safe_dump(config, sort_keys=False))
            path = self.state.path(rel)
            await asyncio.to_thread(self.deployer.deploy, config)
        except Exception as err:
            logger.exception("deploying retrain request %s failed", r["id"])
            r = self.retrainer.deploy_failed(r["id"], str(err))
            self._emit("retrain_deploy_failed", r, error=str(err)[:500])
            raise DeployFailed(f"deploy failed, live traffic unchanged: {err}") from None
        self._emit("retrain_deploying", r, variant=canary_name(r["version"]), config=str(path))
        return {**r, "serve_config": str(path)}


def _args(app: dict[str, Any]) -> dict[str, Any]:
    """An app's builder args, inline (a `config: FILE` is read, so the new args are complete)."""
    args = app.get("args") or {}
    if set(args) == {"config"}:
        loaded: dict[str, Any] = yaml.safe_load(Path(args["config"]).read_text())
        return loaded
    return dict(args)
