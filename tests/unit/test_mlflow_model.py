"""A version as an MLflow model, without Ray or a registry: the files the training job adds load
with `mlflow.pyfunc.load_model` from the version's own folder and answer raw records (a missing
number, an unseen category) with the labels and probabilities of the Serve app's graph; the
signature names the raw columns; nothing is pickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipyard.bundle.files import verify_bundle, write_bundle
from shipyard.bundle.graph import OnnxPredictor
from shipyard.bundle.mlflow_model import example_of, mlflow_files
from shipyard.bundle.schema import InputSchema
from shipyard.demo import datagen
from tests.unit.test_edge import bundle  # noqa: F401  (fixture: a real binary ONNX version)


def test_a_version_loads_as_a_pyfunc_and_answers_as_the_graph_does(
    bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    import mlflow.pyfunc

    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    raw = datagen.generate(40, seed=3)
    files = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    files.update(mlflow_files(schema, example_of(schema, raw)))
    version = tmp_path / "model"
    write_bundle(version, files)
    sums = verify_bundle(version, required=("model.onnx", "input_schema.json"))
    assert {"MLmodel", "code/shipyard_onnx_pyfunc.py"} <= set(sums)  # under the same manifest
    assert not [p for p in version.rglob("*") if p.suffix in {".pkl", ".pickle", ".joblib"}]

    frame = raw[schema.names].copy()
    numeric = next(f.name for f in schema.features if f.kind == "numeric")
    category = next(f.name for f in schema.features if f.kind == "categorical")
    frame.loc[0, numeric] = None
    frame[category] = frame[category].astype(object)
    frame.loc[1, category] = "a-category-never-seen"
    model = mlflow.pyfunc.load_model(str(version))
    answer = model.predict(frame)
    p = OnnxPredictor((bundle / "model.onnx").read_bytes(), schema).predict(frame)
    assert np.allclose(answer["probability_1"], p, atol=1e-6, rtol=0)
    assert np.allclose(answer["probability_0"] + answer["probability_1"], 1.0, atol=1e-6)
    assert answer["label"].tolist() == [schema.classes[int(x >= 0.5)] for x in p]
    assert model.metadata.get_input_schema().input_names() == schema.names
    example = pd.read_json(version / "input_example.json", orient="split")
    assert list(example.columns) == schema.names and len(example) == 5
    from mlflow.models import validate_serving_input  # what MLflow checks before it serves

    served = validate_serving_input(
        str(version), (version / "serving_input_example.json").read_text()
    )
    assert len(served) == 5 and set(served.columns) == {"label", "probability_0", "probability_1"}
    moved = tmp_path / "elsewhere"  # the folder is self-contained: copied, it still loads
    shutil.copytree(version, moved)
    assert mlflow.pyfunc.load_model(str(moved)).predict(frame.head(3)).shape[0] == 3


def test_an_older_version_becomes_an_mlflow_model_without_retraining(
    bundle: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`shipyard mlflow-model NAME VERSION` on a version registered without the MLflow files:
    they are added beside its bundle under a grown manifest (the download still verifies every
    file), it loads by its number, and a second run changes nothing and says so."""
    import mlflow.pyfunc

    from shipyard.cli import main
    from shipyard.registry import MODEL_DIR, Registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    registry = Registry()
    files = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    files.update({"reference_profile.json": b"{}", "evaluation.json": b"{}"})
    run_id = registry.start_run(registry.ensure_experiment("shipyard/old"), "old", {})
    write_bundle(tmp_path / "art" / MODEL_DIR, files)
    registry.log_artifacts(run_id, tmp_path / "art")
    registry.end_run(run_id)
    version = registry.register("old-model", run_id, {})

    assert main(["mlflow-model", "old-model", str(version)]) == 0
    said = capsys.readouterr().out
    assert "added MLmodel" in said and "code/shipyard_onnx_pyfunc.py" in said
    downloaded = registry.download("old-model", version, tmp_path / "dl")  # verified
    manifest = json.loads((downloaded / "manifest.json").read_text())["sha256"]
    assert {"MLmodel", "model.onnx", "requirements.txt"} <= set(manifest)
    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    frame = datagen.generate(10, seed=5)[schema.names]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)  # what models:/ reads
    answer = mlflow.pyfunc.load_model(f"models:/old-model/{version}").predict(frame)
    p = OnnxPredictor((bundle / "model.onnx").read_bytes(), schema).predict(frame)
    assert np.allclose(answer["probability_1"], p, atol=1e-6, rtol=0)
    assert main(["mlflow-model", "old-model", str(version)]) == 0
    assert "already is an MLflow model" in capsys.readouterr().out
