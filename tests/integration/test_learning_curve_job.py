"""`jobs.learning_curve` through the real `ray job submit` CLI on the session's cluster."""

from pathlib import Path
from typing import Any

from shipyard import contract
from tests.conftest import job_result


def test_learning_curve_job_reports_points_a_fit_and_a_plot(
    session_jobs: dict[str, Any], registry: Any
) -> None:
    """The job was submitted with the session's jobs (`conftest.session_jobs`): fractions
    0.1, 0.25, 0.5 and 1.0 of the training split, one repeat each."""
    proc = session_jobs["curve"].finish()
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
