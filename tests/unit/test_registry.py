"""The registry against a real MLflow SQLite store (no Ray)."""

from pathlib import Path

import pytest

from shipyard.bundle.files import REQUIRED, write_bundle
from shipyard.errors import ArtifactError, ModelNotFound
from shipyard.registry import CHAMPION, MODEL_DIR, Registry, registry_loader


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    return Registry()


def logged_run(reg: Registry, tmp_path: Path, tag: str) -> str:
    exp = reg.ensure_experiment("shipyard/test")
    run_id = reg.start_run(exp, f"run-{tag}", {"t": tag})
    reg.log(run_id, params={"a": 1}, metrics={"auc": 0.8, "nan": float("nan")})
    src = tmp_path / f"art-{tag}"
    write_bundle(src / MODEL_DIR, {n: f"{tag}:{n}".encode() for n in REQUIRED})
    reg.log_artifacts(run_id, src)
    reg.end_run(run_id)
    return run_id


def test_default_store_is_sqlite_under_home(registry: Registry, tmp_path: Path) -> None:
    assert registry.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    exp = registry.ensure_experiment("shipyard/x")
    assert registry.ensure_experiment("shipyard/x") == exp
    location = registry.client.get_experiment(exp).artifact_location
    assert location.startswith((tmp_path / "home" / "mlartifacts").as_uri())


def test_register_alias_download(registry: Registry, tmp_path: Path) -> None:
    v1 = registry.register("m", logged_run(registry, tmp_path, "one"), {"k": "v"})
    v2 = registry.register("m", logged_run(registry, tmp_path, "two"), {})
    assert (v1, v2) == (1, 2)
    registry.set_alias("m", CHAMPION, v1)
    assert registry.aliases("m") == {CHAMPION: 1}
    champion = registry.champion("m")
    assert champion is not None and int(champion.version) == 1
    path = registry.download("m", CHAMPION, tmp_path / "dl")
    assert (path / "model.onnx").read_bytes() == b"one:model.onnx"
    assert (
        registry.download("m", 2, tmp_path / "dl2") / "model.onnx"
    ).read_bytes() == b"two:model.onnx"


def test_unknown_version_names_what_exists(registry: Registry, tmp_path: Path) -> None:
    registry.register("m", logged_run(registry, tmp_path, "one"), {})
    with pytest.raises(ModelNotFound, match=r"no version '7'; versions: \[1\]"):
        registry.get_version("m", "7")
    with pytest.raises(ModelNotFound, match="no version 'staging'"):
        registry.get_version("m", "staging")
    assert registry.champion("nothing") is None


def test_corrupt_artifact_is_refused(registry: Registry, tmp_path: Path) -> None:
    run_id = logged_run(registry, tmp_path, "one")
    registry.register("m", run_id, {})
    src = Path(registry.artifact_uri(run_id).removeprefix("file://")) / MODEL_DIR / "model.onnx"
    src.write_bytes(b"flipped bits")
    with pytest.raises(ArtifactError, match="'model.onnx'.*corrupt"):
        registry.download("m", 1, tmp_path / "dl")


def test_a_failed_load_leaves_no_temporary_directory(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving loader downloads to a temporary directory: gone after the load, whether the
    bundle was sound or corrupt (a crash-looping replica must not fill the disk)."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    run_id = logged_run(registry, tmp_path, "one")
    registry.register("m", run_id, {})
    with registry_loader("m", 1, registry.tracking_uri) as bundle:
        assert (bundle / "model.onnx").read_bytes() == b"one:model.onnx"
    assert list(scratch.iterdir()) == []
    src = Path(registry.artifact_uri(run_id).removeprefix("file://")) / MODEL_DIR / "model.onnx"
    src.write_bytes(b"flipped bits")
    for _ in range(3):
        with pytest.raises(ArtifactError), registry_loader("m", 1, registry.tracking_uri):
            pass
        with pytest.raises(ArtifactError):
            registry.download("m", 1)  # its own temporary directory, removed on failure
    assert list(scratch.iterdir()) == []
