"""The training job through the real `ray job submit` CLI, a real local Ray and a real MLflow store."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shipyard import contract
from shipyard.bundle.files import REQUIRED
from shipyard.bundle.graph import OnnxPredictor, native_predict, parity
from shipyard.bundle.schema import InputSchema
from shipyard.demo import datagen
from shipyard.events import EventLog
from shipyard.registry import CHALLENGER, CHAMPION
from tests.conftest import MODEL


def test_job_registers_a_complete_version(trained: dict[str, Any], registry: Any) -> None:
    assert "succeeded" in trained["output"]  # the `ray job submit` CLI's own verdict
    res = trained["result"]
    assert res["registered_version"] == 1
    assert registry.aliases(MODEL) == {CHAMPION: 1, CHALLENGER: 1}
    assert res["metrics"]["auc"] > res["baseline"]["auc"]

    mv = registry.get_version(MODEL, 1)
    run = registry.client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert run.data.tags["shipyard.status"] == "registered"
    assert run.data.params["train.num_workers"] == "2"
    for m in (
        "auc",
        "log_loss",
        "accuracy",
        "f1",
        "calibration_error",
        "baseline_auc",
        "onnx_p50_ms",
        "slices_tested",
        "fairness.country.demographic_parity_difference",
        "fairness.country.equalized_odds_difference.ci_high",
    ):
        assert m in run.data.metrics, m
    # The result line shows the slice gate (worst slices with intervals) and the group gaps.
    assert res["slices"]["failed"] == 0 and len(res["slices"]["worst"]) == 3
    assert "rows): auc" in res["slices"]["worst"][0] and "[" in res["slices"]["worst"][0]
    gaps = res["fairness"]["country"]
    assert set(gaps) == {"demographic_parity_difference", "equalized_odds_difference"}
    assert mv.tags["data_fingerprint"] == run.data.params["data.sha256"]


def test_bundle_is_self_contained_and_verified(
    trained: dict[str, Any], registry: Any, tmp_path: Path
) -> None:
    bundle = registry.download(MODEL, CHAMPION, tmp_path)  # verifies every checksum
    names = {p.name for p in bundle.iterdir()}
    assert set(REQUIRED) | {"manifest.json", "lineage.json"} <= names
    assert not any(n.endswith((".pkl", ".pickle", ".joblib")) for n in names)

    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    assert "customer_id" not in schema.names and "ts" not in schema.names
    assert {f.name for f in schema.features if f.kind == "categorical"} == set(datagen.CATEGORICAL)
    profile = json.loads((bundle / "reference_profile.json").read_text())
    assert set(profile["features"]) == set(schema.names)
    assert profile["features"]["income"]["missing_rate"] > 0.02
    assert profile["prediction"]["counts"]

    evaluation = json.loads((bundle / "evaluation.json").read_text())
    assert evaluation["gates"]["passed"] is True
    slices = evaluation["slices"]  # every feature: categorical values and numeric quartiles
    assert {s["feature"] for s in slices["slices"]} == set(schema.names)
    assert slices["failed"] == 0 and slices["tested"] >= 30 and slices["correction"] == "holm"
    assert all(s["ci95"] for s in slices["slices"] if s["verdict"] != "untested")
    lineage = json.loads((bundle / "lineage.json").read_text())
    assert lineage["data"]["files"] and all("sha256" in f for f in lineage["data"]["files"])
    # The code it ran, named without git: the job, started by the real `ray job submit`, hashed
    # its unpacked working directory and shipyard package to what this checkout hashes to here.
    from shipyard.bundle.lineage import run_code

    assert lineage["code"]["sha256"] == run_code()["sha256"] and lineage["code"]["files"] > 50
    mv = registry.get_version(MODEL, CHAMPION)
    assert mv.tags["code_sha256"] == lineage["code"]["sha256"]
    run = registry.client.get_run(mv.run_id)
    assert run.data.tags["shipyard.code.sha256"] == lineage["code"]["sha256"]

    # The registered ONNX graph and the native booster agree on raw, drifted data.
    booster = xgb.Booster(model_file=str(bundle / "booster.ubj"))
    predictor = OnnxPredictor((bundle / "model.onnx").read_bytes(), schema)
    fresh = pd.concat(
        [
            datagen.generate(1000, seed=42),
            datagen.generate(500, seed=43, scenario="unseen_categories"),
        ]
    )
    assert parity(predictor, booster, fresh, 1e-5)["max_abs_diff"] <= 1e-5
    assert np.isfinite(native_predict(booster, schema, fresh)).all()


def test_checkpoints_and_events(trained: dict[str, Any], registry: Any, home: Path) -> None:
    evaluation = json.loads(
        (registry.download(MODEL, 1, home / "dl-ck") / "evaluation.json").read_text()
    )
    ckpt = Path(evaluation["training"]["checkpoint"])
    assert (ckpt / "model.ubj").is_file()
    run_id = trained["result"]["run_id"]
    kinds = [e["kind"] for e in EventLog(home / "events.jsonl").read() if e.get("run_id") == run_id]
    assert kinds == ["run_started", "version_registered", "run_finished"]


@pytest.fixture(scope="module")
def later_runs(later_jobs: dict[str, Any]) -> dict[str, Any]:
    """Two more runs at once (started in the background by `later_jobs`): a second candidate
    through `ray job submit` and one that fails its gates (a plain driver)."""
    return {"second": later_jobs["second"].finish(), "gated": later_jobs["gated"].finish(),
            "aliases_before": later_jobs["aliases_before"]}  # fmt: skip


def test_second_run_is_challenger_and_compared_to_champion(
    later_runs: dict[str, Any], registry: Any, home: Path
) -> None:
    proc = later_runs["second"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert registry.aliases(MODEL) == {CHAMPION: 1, CHALLENGER: 2}
    ev = json.loads((registry.download(MODEL, 2, home / "dl-2") / "evaluation.json").read_text())
    assert ev["champion"]["version"] == 1 and ev["champion"]["comparable"] is True
    assert ev["lift_over_champion"] == ev["metrics"]["auc"] - ev["champion"]["auc"]
    # Trained in the job's own process (Ray Train's local mode): nothing was checkpointed.
    assert ev["training"]["num_workers"] == 0 and ev["training"]["checkpoint"] is None
    assert ev["training"]["rounds"] >= ev["training"]["best_iteration"] + 1 > 0


def test_failed_gate_is_tracked_and_registers_nothing(
    later_runs: dict[str, Any], registry: Any, home: Path
) -> None:
    proc = later_runs["gated"]
    assert proc.returncode == contract.EXIT_GATES, proc.stderr[-3000:]
    assert "gates.baseline_margin=0.5" in proc.stderr
    runs = registry.client.search_runs(
        [registry.client.get_experiment_by_name(f"shipyard/{MODEL}").experiment_id],
        "tags.`shipyard.status` = 'gates_failed'",
    )
    assert len(runs) == 1 and "baseline_margin" in runs[0].data.tags["shipyard.gates"]
    # No version from the failed run; the champion stays (the concurrent second run moved only
    # the challenger alias, to its own version).
    assert runs[0].info.run_id not in {v.run_id for v in registry.versions(MODEL)}
    assert registry.aliases(MODEL)[CHAMPION] == later_runs["aliases_before"][CHAMPION] == 1
    assert any(e["kind"] == "gate_failed" for e in EventLog(home / "events.jsonl").read())
