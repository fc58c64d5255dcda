"""Multiclass through the same job (real Ray, real MLflow), on a target with signal. (Regression
runs on a real table: test_real_data, whose jobs start beside this one.)"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shipyard.bundle.graph import OnnxPredictor, parity
from shipyard.bundle.schema import InputSchema
from shipyard.demo import datagen
from tests.conftest import run_jobs, write_config


def frame(task: str) -> pd.DataFrame:
    df = datagen.generate(4000, seed=11).drop(columns=["churned"])
    noise = np.random.default_rng(11).normal(0, 0.25, len(df))
    # A nonlinear, three-way tier: trees beat a linear model here.
    score = (
        np.tanh((df["sessions_30d"] - 12) / 3)
        + (df["plan"] == "enterprise").astype(float) * 1.5
        + noise
    )
    df["tier"] = pd.cut(score, [-np.inf, -0.5, 0.5, np.inf], labels=["low", "mid", "high"])
    df["tier"] = df["tier"].astype(str)
    return df


TASKS = {"multiclass": "tier"}


@pytest.fixture(scope="module")
def trained_tasks(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: Any,
    job_env: dict[str, str],
    session_jobs: dict[str, Any],
    real_jobs: dict[str, Any],
) -> dict[str, Any]:
    """The task's job, one thread in its own process (local mode), beside the session's own jobs and the real tables' (both
    started here at the latest, so that their start-up overlaps)."""
    jobs = {}
    for task, target in TASKS.items():
        tmp = tmp_path_factory.mktemp(task)
        (tmp / "d").mkdir()
        frame(task).to_parquet(tmp / "d" / "part-0.parquet", index=False)
        cfg = write_config(
            tmp / "c.yaml",
            str(tmp / "d"),
            model={"name": f"{task}-test"},
            data={"target": target, "task": task, "time_column": None},
            train={"num_workers": 0, "cpus_per_worker": 1},  # local mode: in the driver
            gates={"max_slice_gap": 1.0},  # the task path; slice gates are tested elsewhere
            fairness={"sensitive": []},  # group rates are for binary tasks
        )
        jobs[task] = ["--config", str(cfg)]
    return run_jobs(cluster, job_env, jobs)


@pytest.mark.parametrize("task", list(TASKS))
def test_task_registers_with_parity(
    task: str, trained_tasks: dict[str, Any], tmp_path: Path, registry: Any
) -> None:
    proc = trained_tasks[task]
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = f"{task}-test"
    bundle = registry.download(name, "champion", tmp_path / "dl")
    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    ev = json.loads((bundle / "evaluation.json").read_text())
    assert schema.task == task and ev["lift_over_baseline"] > 0
    assert list(schema.classes) == ["high", "low", "mid"]
    assert ev["metrics"]["macro_f1"] > 0.75
    predictor = OnnxPredictor((bundle / "model.onnx").read_bytes(), schema)
    booster = xgb.Booster(model_file=str(bundle / "booster.ubj"))
    assert parity(predictor, booster, frame(task).head(500), 1e-5)["ok"]
