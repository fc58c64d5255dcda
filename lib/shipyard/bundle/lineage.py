"""Where a run's code came from: the git commit (shared by the jobs and their submitters) and a
hash of the code the run actually ran, which needs no git."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

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


CODE_SUFFIXES = (".py", ".yaml", ".yml", ".lock")
# What a job's working directory holds beside its code: skipped, as `ray job submit` skips them
# (shipyard.compute.submit.EXCLUDES; hidden folders are caches, environments and VCS data).
SKIPPED = {"state", "__pycache__", "node_modules"}
MAX_FILES = 20_000  # files looked at per root (a working directory full of data is cut short)


def code_hash(roots: dict[str, Path]) -> dict[str, object]:
    """SHA-256 over the sorted paths and bytes of the `.py`, `.yaml` and lock files under each
    root (named: the job's working directory, the installed `shipyard` package), so two runs of
    the same code have the same hash wherever they ran and however they were started, and a
    one-byte change to a job changes it."""
    digest = hashlib.sha256()
    count, truncated = 0, False
    for label in sorted(roots):
        root = roots[label]
        files: list[Path] = []
        seen = 0
        for here, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED)
            seen += len(names)
            if seen > MAX_FILES:
                truncated = True
                break
            files += [Path(here) / n for n in names if n.endswith(CODE_SUFFIXES)]
        for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
            data = path.read_bytes()
            rel = path.relative_to(root).as_posix()
            digest.update(f"{label}/{rel}\0{len(data)}\0".encode())
            digest.update(data)
            count += 1
    return {"sha256": digest.hexdigest(), "files": count, "truncated": truncated}


def run_code() -> dict[str, object]:
    """The code this process runs: its working directory and the `shipyard` package it imported
    (a py_module under `ray job submit`, the checkout's lib/ under `make`)."""
    import shipyard

    return code_hash({"workdir": Path.cwd(), "shipyard": Path(shipyard.__file__).parent})
