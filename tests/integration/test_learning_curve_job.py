"""`jobs.learning_curve` through the real `ray job submit` CLI on the session's cluster."""

import subprocess
from pathlib import Path
from typing import Any

from shipyard import contract
from shipyard.compute.localray import ray_env
from shipyard.compute.submit import submit_command
from tests.conftest import REPO, job_result, write_config


def test_learning_curve_job_reports_points_a_fit_and_a_plot(
    cluster: Any, dataset: Path, job_env: dict[str, str], home: Path, registry: Any
) -> None:
    cfg = write_config(
        home / "curve.yaml", str(dataset / "*.parquet"), model={"name": "churn-curve"}
    )
    entry = ["python", "-m", "jobs.learning_curve", "--config", str(cfg)]
    entry += ["--fractions", "0.1,0.25,0.5,1.0", "--repeats", "1"]
    proc = subprocess.run(
        submit_command(cluster.address, entry, env_vars=job_env),
        cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    report = job_result(out, contract.CURVE_RESULT_TAG)
    rows = [p["rows"] for p in report["points"]]
    assert len(rows) == 4 and rows == sorted(rows) and rows[-1] == report["train_rows"]
    assert all(0.5 < p["auc"] <= 1 for p in report["points"])
    # More data helps this model on this data: the largest fit beats the smallest.
    assert report["points"][-1]["auc"] > report["points"][0]["auc"]
    assert report["verdict"] and report["curve"]["gain_if_doubled"] is not None
    assert Path(report["plot"]).read_bytes()[:4] == b"\x89PNG"
    run = registry.client.get_run(report["run_id"])
    assert run.data.tags["shipyard.kind"] == "learning_curve"
    assert {a.path for a in registry.client.list_artifacts(report["run_id"], "learning_curve")} == {
        "learning_curve/learning_curve.json",
        "learning_curve/learning_curve.png",
    }
