"""Retraining on drift (`on_drift: retrain`): when to submit a job, and the life of each request.

A request moves: submitting -> running -> awaiting_approval -> deploying -> live, or ends as
failed, gates_failed (the job ran but its candidate did not pass the promotion gates), rejected
(a person said no) or skipped. At most one request is active at a time, and a new one waits for
`cooldown_s` after the last, so a lasting drift does not start a job per window. Nothing reaches
live traffic before a person approves (`require_approval`, the default).

Pure logic with an injected clock; `serving.retrain` runs it next to the Ray job submission API.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.config.serving import RetrainSection
from shipyard.contract import TRAIN_MODULE
from shipyard.errors import ConfigError, Conflict, NotFound
from shipyard.monitoring.drift import PREDICTION
from shipyard.storage import StateDir

ACTIVE = ("submitting", "running", "awaiting_approval", "deploying")
STATE_FILE = "retrain.json"  # under the app's state_uri
DATA_BUG_FLAGS = {"missing_rate", "unseen_categories", "type_errors"}


class RetrainConflict(Conflict):
    """The request is not in a state that allows this (approve twice, reject a live one...)."""


class RetrainNotFound(NotFound):
    """No retraining request with that id."""


def drift_kinds(event: dict[str, Any]) -> dict[str, list[str]]:
    """A drift_started event -> {kind: features}: features (input distributions), prediction
    (output distribution), quality (missing values, unseen categories, type errors: upstream
    data bugs more often than a changed world). Values out of the training range that also
    shift the distribution are a changed world (features)."""
    kinds: dict[str, list[str]] = {}
    for name, score in (event.get("scores") or {}).items():
        if name == PREDICTION:
            kind = "prediction"
        elif set(score.get("flags", [])) & DATA_BUG_FLAGS:
            kind = "quality"
        elif score.get("distribution"):
            kind = "features"
        else:
            kind = "quality"
        kinds.setdefault(kind, []).append(name)
    return kinds


def resolve_job_config(path: str, project_root: Path) -> str:
    """The training config as an absolute path: as given, from the working directory, or from
    the installed project (so `jobs/configs/demo.yaml` works wherever the app is built)."""
    if "://" in path:
        return path
    for candidate in (Path(path).expanduser(), Path.cwd() / path, project_root / path):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ConfigError(
        f"retrain.job_config {path!r} is not a file (looked in {Path.cwd()} and {project_root}); "
        "give a training job config such as jobs/configs/demo.yaml"
    )


def job_entrypoint(python: str, model: str, section: RetrainSection, job_config: str) -> str:
    """The `jobs.train` command line for a retraining job (registers under the serving model)."""
    args = [python, "-m", TRAIN_MODULE, "--config", job_config, "--model-name", model]
    if section.data:
        args += ["--data", section.data]
    for key, value in section.overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return shlex.join(args)


def canary_name(version: int) -> str:
    return f"retrain-v{version}"


def with_canary(
    app_args: dict[str, Any],
    traffic: dict[str, Any],
    version: int,
    weight: float,
    serving: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The serving app's args with version `version` added as a live variant at `weight`.

    Every other variant keeps the traffic it has now (`traffic`: the live weights, shadows and
    control, which PUT /variants or a rollback may have changed since the last deploy) and the
    version it serves now (`serving`: variant -> version number, as resolved at the last
    deploy): an alias such as `challenger` may have moved or gone since (a rollback, a
    promotion, another retrain), and the redeploy must neither fail on it nor switch a live
    variant to another version. The new variant copies the control's resources.
    """
    args = copy.deepcopy(app_args)
    variants = args["variants"]
    names = [v["name"] for v in variants]
    control = traffic.get("control") or next(
        (v["name"] for v in variants if v.get("weight", 0) > 0), names[0]
    )
    for v in variants:
        if serving and v["name"] in serving:
            v["version"] = int(serving[v["name"]])
        if v["name"] in traffic.get("weights", {}):
            v["weight"] = traffic["weights"][v["name"]]
        v["shadow"] = traffic.get("shadow", {}).get(v["name"], 0.0)
        if v["shadow"] > 0:
            v["weight"] = 0.0
    name = canary_name(version)
    base = next(v for v in variants if v["name"] == control)
    new = {k: copy.deepcopy(val) for k, val in base.items() if k not in ("faults",)}
    new.update(name=name, version=version, weight=weight, shadow=0.0)
    args["variants"] = [v for v in variants if v["name"] != name] + [new]
    args["control"] = control
    return args


class Retrainer:
    """The retraining requests of one serving app, saved to `path` after every change."""

    def __init__(
        self,
        model: str,
        section: RetrainSection,
        state: StateDir | str | os.PathLike[str],
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`state`: the app's state folder (or its path/URI); the requests are `retrain.json`."""
        self.model = model
        self.section = section
        self.enabled = enabled
        self.state = state if isinstance(state, StateDir) else StateDir(state)
        self.clock = clock
        self.requests: list[dict[str, Any]] = []
        self.skipped = 0
        raw = self.state.read(STATE_FILE)
        if raw is not None:
            saved = json.loads(raw)
            self.requests = saved.get("requests", [])
            self.skipped = int(saved.get("skipped", 0))

    def save(self) -> None:
        """StorageError if storage refused: the caller's change is then not acknowledged."""
        data = json.dumps({"requests": self.requests, "skipped": self.skipped})
        self.state.write(STATE_FILE, data)

    # -- deciding --
    def active(self) -> dict[str, Any] | None:
        return next((r for r in self.requests if r["status"] in ACTIVE), None)

    def consider(self, trigger: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """A drift trigger ({variant, version, kinds: {kind: features}}) -> a new request to
        submit, or None and the reason it was not."""
        if not self.enabled:
            return None, "on_drift is alert"
        kinds = {k: v for k, v in trigger.get("kinds", {}).items() if k in self.section.triggers}
        if not kinds:
            return None, (
                f"drift kinds {sorted(trigger.get('kinds', {}))} are not in retrain.triggers "
                f"{self.section.triggers}"
            )
        active = self.active()
        if active is not None:
            self.skipped += 1
            self.save()
            return None, f"request {active['id']} is {active['status']}"
        last = max((r["created"] for r in self.requests), default=None)
        now = self.clock()
        if last is not None and now - last < self.section.cooldown_s:
            self.skipped += 1
            self.save()
            return None, f"cooldown: {self.section.cooldown_s - (now - last):.0f} s left"
        request = {
            "id": uuid.uuid4().hex[:8],
            "model": self.model,
            "created": now,
            "status": "submitting",
            "trigger": {**trigger, "kinds": kinds},
            "submission_id": None,
            "version": None,
            "result": None,
            "decided_by": None,
            "decided_at": None,
            "reason": None,
            "variant": None,
            "error": None,
        }
        request["submission_id"] = f"shipyard-retrain-{_slug(self.model)}-{request['id']}"
        self.requests.append(request)
        self.save()
        return request, "submitted"

    def get(self, request_id: str) -> dict[str, Any]:
        for r in self.requests:
            if r["id"] == request_id:
                return r
        raise RetrainNotFound(
            f"no retraining request {request_id!r}; requests: {[r['id'] for r in self.requests]}"
        )

    # -- the job --
    def submit_failed(self, request_id: str, error: str) -> None:
        r = self.get(request_id)
        r.update(status="failed", error=f"submission failed: {error}")
        self.save()

    def submitted(self, request_id: str) -> None:
        self.get(request_id)["status"] = "running"
        self.save()

    def job_finished(
        self, request_id: str, job_status: str, result: dict[str, Any] | None, message: str = ""
    ) -> dict[str, Any] | None:
        """SUCCEEDED with a registered version -> awaiting_approval (or deploying when no
        approval is required); gate failures -> gates_failed; anything else -> failed. None when
        the request is no longer running: a person rejected it, or another poll already took the
        job's end (a second one would undo an approval given in between)."""
        r = self.get(request_id)
        if r["status"] != "running":
            return None
        r["result"] = result
        version = (result or {}).get("registered_version")
        if job_status == "SUCCEEDED" and version is not None:
            r["version"] = int(version)
            if self.section.require_approval:
                r["status"] = "awaiting_approval"
            else:
                r.update(status="deploying", decided_by="policy (require_approval: false)",
                         decided_at=self.clock())  # fmt: skip
        elif (result or {}).get("gate_failures"):
            r["status"] = "gates_failed"
            r["reason"] = "; ".join(result["gate_failures"])  # type: ignore[index]
        else:
            r["status"] = "failed"
            r["error"] = f"job {job_status}: {message}"[:2000]
        self.save()
        return r

    # -- a person --
    def approve(self, request_id: str, by: str) -> dict[str, Any]:
        r = self.get(request_id)
        if r["status"] != "awaiting_approval":
            raise RetrainConflict(
                f"request {request_id} is {r['status']}; only a request awaiting_approval can be "
                "approved"
            )
        r.update(status="deploying", decided_by=by, decided_at=self.clock())
        self.save()
        return r

    def reject(self, request_id: str, by: str, reason: str) -> dict[str, Any]:
        r = self.get(request_id)
        if r["status"] not in ("awaiting_approval", "running", "submitting"):
            raise RetrainConflict(
                f"request {request_id} is {r['status']}; only a request awaiting_approval or "
                "running can be rejected"
            )
        r.update(status="rejected", decided_by=by, decided_at=self.clock(), reason=reason)
        self.save()
        return r

    # -- deploying --
    def deploy_failed(self, request_id: str, error: str) -> dict[str, Any]:
        """The app could not be redeployed: back to awaiting_approval, live traffic untouched."""
        r = self.get(request_id)
        r.update(status="awaiting_approval", error=f"deploy failed: {error}"[:2000],
                 decided_by=None, decided_at=None)  # fmt: skip
        self.save()
        return r

    def deployed(self, request_id: str, variant: str) -> dict[str, Any]:
        r = self.get(request_id)
        r.update(status="live", variant=variant, error=None)
        self.save()
        return r

    def report(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "on_drift": "retrain" if self.enabled else "alert",
            "require_approval": self.section.require_approval,
            "canary_weight": self.section.canary_weight,
            "cooldown_s": self.section.cooldown_s,
            "triggers": self.section.triggers,
            "skipped_triggers": self.skipped,
            "requests": list(reversed(self.requests)),
        }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
