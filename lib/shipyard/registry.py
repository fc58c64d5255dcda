"""The MLflow tracking store and model registry, through one small client.

A version's source is its run's `model/` artifact directory: the ONNX graph, the native booster,
the input schema, the reference profile, the evaluation report and a checksum manifest.
Aliases `champion` and `challenger` say which versions are live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from shipyard.bundle.files import verify_bundle
from shipyard.contract import HOME_ENV
from shipyard.errors import ModelNotFound

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_DIR = "model"


def shipyard_home() -> Path:
    """State directory (tracking DB, artifacts, checkpoints, events): $SHIPYARD_HOME or ./state."""
    return Path(os.environ.get(HOME_ENV) or "state").absolute()


def resolve_tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then an embedded SQLite store under the home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    home = shipyard_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


class Registry:
    """Thin wrapper over `MlflowClient` with explicit URIs (no global MLflow state)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # --- tracking -------------------------------------------------------------------------
    def ensure_experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.tracking_uri.startswith("sqlite:"):
            # Local stores keep artifacts beside the DB, not in the job's (temporary) cwd.
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts" / name.replace("/", "_")).as_uri()
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Two jobs that start together both find no experiment; one creates it.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def start_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float | None] | None = None,  # None and NaN are skipped
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = int(1000 * time.time())
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [
            Metric(k, float(v), ts, 0)
            for k, v in (metrics or {}).items()
            if v is not None and v == v  # skip NaN
        ]
        tg = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ps), len(ms), len(tg)), 100):
            self.client.log_batch(
                run_id, metrics=ms[i : i + 100], params=ps[i : i + 100], tags=tg[i : i + 100]
            )

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def artifact_uri(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.artifact_uri)

    # --- registry -------------------------------------------------------------------------
    def register(self, name: str, run_id: str, tags: dict[str, str], description: str = "") -> int:
        """Create a version from the run's model/ directory; aliases are set separately."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description or None)
        mv = self.client.create_model_version(
            name,
            source=f"{self.artifact_uri(run_id)}/{MODEL_DIR}",
            run_id=run_id,
            tags=tags,
        )
        return int(mv.version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    def aliases(self, name: str) -> dict[str, int]:
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(name)
        except MlflowException:
            return {}
        return {a: int(v) for a, v in rm.aliases.items()}

    def versions(self, name: str) -> list[Any]:
        return list(self.client.search_model_versions(f"name='{name}'"))

    def get_version(self, name: str, ref: str | int) -> Any:
        """A version by number or alias; ModelNotFound names what exists."""
        from mlflow.exceptions import MlflowException

        try:
            if isinstance(ref, int) or str(ref).isdigit():
                return self.client.get_model_version(name, str(ref))
            return self.client.get_model_version_by_alias(name, str(ref))
        except MlflowException:
            known = sorted(int(v.version) for v in self.versions(name))
            raise ModelNotFound(
                f"model {name!r} has no version {ref!r}; versions: {known}, "
                f"aliases: {self.aliases(name)}"
            ) from None

    def champion(self, name: str) -> Any | None:
        return self.get_version(name, CHAMPION) if CHAMPION in self.aliases(name) else None

    def download(self, name: str, ref: str | int, dst: Path | None = None) -> Path:
        """Download a version's bundle and verify every checksum before returning its path.
        Without `dst` it goes to a new temporary directory, removed again if the download or a
        checksum fails."""
        import mlflow.artifacts

        mv = self.get_version(name, ref)
        target = dst or Path(tempfile.mkdtemp(prefix=f"shipyard-{name}-v{mv.version}-"))
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(target), tracking_uri=self.tracking_uri
            )
            verify_bundle(Path(path))
        except BaseException:
            if dst is None:
                shutil.rmtree(target, ignore_errors=True)
            raise
        return Path(path)


def add_mlflow_model(registry: Registry, name: str, version: int) -> list[str]:
    """Make a version registered before versions carried an MLflow model one, without
    retraining: its bundle is downloaded and verified, the MLflow files (no input example: the
    holdout is not kept) are uploaded beside it, then the manifest that covers them. Returns the
    files added (none if it already is an MLflow model)."""
    from shipyard.bundle.files import MANIFEST, write_bundle, write_manifest
    from shipyard.bundle.mlflow_model import mlflow_files
    from shipyard.bundle.schema import InputSchema

    mv = registry.get_version(name, version)
    if mv.source != f"{registry.artifact_uri(mv.run_id)}/{MODEL_DIR}":
        raise ValueError(
            f"{name} v{version}: its files are not its run's {MODEL_DIR}/ ({mv.source})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        bundle = registry.download(name, version, Path(tmp) / "bundle")  # checksums verified
        if (bundle / "MLmodel").exists():
            return []
        sums = json.loads((bundle / MANIFEST).read_text())["sha256"]
        schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
        added = mlflow_files(schema, None)
        new = Path(tmp) / "new"
        grown = {**sums, **write_bundle(new, added)}
        (new / MANIFEST).unlink()  # the files first: until the manifest follows, the old holds
        registry.log_artifacts(mv.run_id, new, MODEL_DIR)
        write_manifest(Path(tmp) / "manifest", grown)
        registry.log_artifacts(mv.run_id, Path(tmp) / "manifest", MODEL_DIR)
    return sorted(added)


# A bundle for the length of a `with`: its files may be gone once the block ends.
Loader = Callable[[str, int, str | None], AbstractContextManager[Path]]


@contextlib.contextmanager
def registry_loader(model: str, version: int, tracking_uri: str | None) -> Iterator[Path]:
    """A version's bundle from the registry, checksums verified (the default `Loader` of the
    serving deployments): downloaded to a temporary directory that is removed when the block
    ends, whether it loaded or not. Raises ArtifactError on any checksum mismatch."""
    with tempfile.TemporaryDirectory(prefix=f"shipyard-{model}-v{version}-") as tmp:
        yield Registry(tracking_uri).download(model, version, Path(tmp))
