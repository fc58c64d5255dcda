"""What the training jobs and the serving side agree on, written once.

`jobs/` and `serving/` never import each other: they meet in the registry, in `state_uri`, and
here. A job's exit code and result line are what its submitters (the demo, the retrain
coordinator, the tests) read; the environment names are how a submitter tells a job why it runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError, DataValidationError, ShipyardError

# --- exit codes of every job CLI ---------------------------------------------------------------
EXIT_OK = 0  # done (for jobs.train: a version was registered)
EXIT_FAILED = 1  # anything else
EXIT_INVALID = 2  # the config or the data is invalid; nothing ran
EXIT_GATES = 3  # the candidate failed its gates: tracked, nothing registered

# --- result lines: one JSON object after a tag, the last such line of a job's output -----------
RESULT_TAG = "SHIPYARD_RESULT"  # jobs.train
TUNE_RESULT_TAG = "SHIPYARD_TUNE_RESULT"  # jobs.tune
CURVE_RESULT_TAG = "SHIPYARD_LEARNING_CURVE"  # jobs.learning_curve

# --- environment names ------------------------------------------------------------------------
HOME_ENV = "SHIPYARD_HOME"  # local state: tracking store, checkpoints, events
STATE_URI_ENV = "SHIPYARD_STATE_URI"  # serving state of every app: <uri>/<model>
SERVING_NODES_ENV = "SHIPYARD_SERVING_NODES"  # key=value,...: labels of the nodes state runs on
TRIGGER_ENV = "SHIPYARD_TRIGGER"  # JSON: why a run exists (set by the retrain coordinator)
COMMIT_ENV, DIRTY_ENV = "SHIPYARD_GIT_COMMIT", "SHIPYARD_GIT_DIRTY"  # set by submitters
WEBHOOK_ENV = "SHIPYARD_WEBHOOK_URL"
# Serve's HTTP proxies refuse bodies over this many bytes before routing them (serving.edge), so a
# huge upload never reaches a replica; set on every node that runs a proxy, before `ray start`.
PROXY_MAX_BODY_ENV = "SHIPYARD_PROXY_MAX_BODY_BYTES"
PROXY_MAX_BODY_DEFAULT = 1_048_576
PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "serving.edge:proxy_middlewares")

# --- the jobs, by module name (submitters run them; nobody imports them) ------------------------
TRAIN_MODULE = "jobs.train"
JOBS_PACKAGE = "jobs"


def _plain(value: Any) -> Any:
    """numpy scalars as numbers; anything else JSON lacks (paths, datetimes) as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def result_line(summary: dict[str, Any], tag: str = RESULT_TAG) -> str:
    return f"{tag} " + json.dumps(summary, default=_plain)


def parse_result(output: str, tag: str = RESULT_TAG) -> dict[str, Any] | None:
    """The JSON after the last `tag` in a job's output. Ray's log streaming can put progress-bar
    escapes in front of it on the same line, so the tag is searched for anywhere on a line."""
    marker = f"{tag} {{"
    for line in reversed(output.splitlines()):
        at = line.find(marker)
        if at >= 0:
            try:
                out: dict[str, Any] = json.loads(line[at + len(tag) + 1 :])
                return out
            except ValueError:
                continue
    return None


def exit_code(err: ShipyardError) -> int:
    return EXIT_INVALID if isinstance(err, ConfigError | DataValidationError) else EXIT_FAILED


def exit_on(err: ShipyardError) -> int:
    """Print a job's error and return its exit code (shared by every job CLI)."""
    print(f"error: {err}", file=sys.stderr)
    return exit_code(err)


def trigger() -> dict[str, Any]:
    """Why this run exists: a drift retraining request (set by the serving app) or a person."""
    raw = os.environ.get(TRIGGER_ENV)
    if not raw:
        return {"kind": "manual"}
    try:
        out: dict[str, Any] = json.loads(raw)
        return out
    except ValueError:
        return {"kind": "unparsable", "raw": raw[:500]}


def project_root() -> Path:
    """The checkout (or installed tree) that holds `jobs/`, found without importing it: relative
    job config paths such as `jobs/configs/demo.yaml` resolve against it."""
    spec = importlib.util.find_spec(JOBS_PACKAGE)
    if spec is None or spec.origin is None:
        return Path.cwd()
    return Path(spec.origin).resolve().parents[1]
