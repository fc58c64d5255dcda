"""Build the `ray job submit` command that ships the job's code to a cluster.

The runtime environment carries the working directory (jobs/, configs) and the `shipyard`
package as a py_module, so the cluster runs this checkout's code, not whatever is installed on
it; `pip` adds the locked dependencies for clusters whose image lacks them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import shipyard

PACKAGE_DIR = Path(shipyard.__file__).parent
EXCLUDES = [".venv", "state", ".git", "benchmarks/results", "**/__pycache__"]


def runtime_env(
    env_vars: dict[str, str] | None = None, pip: list[str] | None = None
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "working_dir": ".",
        "py_modules": [str(PACKAGE_DIR)],
        "excludes": EXCLUDES,
        "env_vars": dict(env_vars or {}),
    }
    if pip:
        env["pip"] = {"packages": pip, "pip_check": False}
    return env


def submit_command(
    address: str,
    entrypoint: list[str],
    env_vars: dict[str, str] | None = None,
    submission_id: str | None = None,
    pip: list[str] | None = None,
    no_wait: bool = False,
) -> list[str]:
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", address,
        "--runtime-env-json", json.dumps(runtime_env(env_vars, pip)),
    ]  # fmt: skip
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if no_wait:
        cmd.append("--no-wait")
    return [*cmd, "--", *entrypoint]
