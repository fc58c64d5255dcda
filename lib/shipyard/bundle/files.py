"""A model version's artifact bundle: files plus a manifest of their SHA-256 checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shipyard.errors import ArtifactError

MANIFEST = "manifest.json"
# What every version holds; none of these formats executes code when loaded.
REQUIRED = (
    "model.onnx",
    "booster.ubj",
    "input_schema.json",
    "reference_profile.json",
    "evaluation.json",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(directory: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write `files` into `directory` with a manifest; returns name -> checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, data in files.items():  # a name may hold folders (code/ of the MLflow model)
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    write_manifest(directory, sums)
    return sums


def write_manifest(directory: Path, sums: dict[str, str]) -> None:
    """The manifest of a bundle whose files have these checksums."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps({"sha256": sums}, indent=2, sort_keys=True))


def verify_bundle(directory: Path, required: tuple[str, ...] = REQUIRED) -> dict[str, str]:
    """Check every file against the manifest; raise ArtifactError naming the first bad file."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"artifact bundle {directory} has no {MANIFEST}")
    sums: dict[str, str] = json.loads(manifest.read_text())["sha256"]
    for name in required:
        if name not in sums:
            raise ArtifactError(f"artifact bundle {directory} lacks required file {name!r}")
    for name, expected in sums.items():
        p = directory / name
        if not p.is_file():
            raise ArtifactError(f"artifact {name!r} is missing from {directory}")
        got = sha256_file(p)
        if got != expected:
            raise ArtifactError(
                f"artifact {name!r} in {directory} is corrupt: sha256 {got[:12]}… does not match "
                f"the manifest's {expected[:12]}…"
            )
    return sums
