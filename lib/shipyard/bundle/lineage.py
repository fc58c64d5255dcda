"""Where a run's code came from: the git commit, shared by the jobs and their submitters."""

from __future__ import annotations

import os
import subprocess

from shipyard.contract import COMMIT_ENV, DIRTY_ENV


def git_commit() -> dict[str, str]:
    """$SHIPYARD_GIT_COMMIT (set by submitters: a job's working dir has no .git), else
    `git rev-parse HEAD` with a dirty flag, else 'unknown'."""
    if os.environ.get(COMMIT_ENV):
        return {"commit": os.environ[COMMIT_ENV], "dirty": os.environ.get(DIRTY_ENV, "unknown")}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(bool(dirty)).lower()}


def git_env() -> dict[str, str]:
    """The env vars that carry this checkout's commit into a submitted job."""
    g = git_commit()
    return {COMMIT_ENV: g["commit"], DIRTY_ENV: g["dirty"]}
