"""Markers by folder: tests/unit -> unit, tests/integration -> integration, tests/model -> model."""

from __future__ import annotations

import os

import pytest

# Explicit, before anything imports Ray or MLflow: token auth off, no telemetry.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for kind in ("unit", "integration", "model"):
            if f"{os.sep}tests{os.sep}{kind}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, kind))


# --- Session fixtures shared by integration and model tests (created only when requested) ----
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from shipyard import contract  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "churn-test"
ADMIN_TOKEN = "test-admin-token"
# Serve runs the way Shipyard deploys it (see README "Serve and A/B test", benchmarks).
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shipyard-home")


@pytest.fixture(scope="session")
def job_env(home: Path) -> dict[str, str]:
    """Environment of the jobs and of the registry as the tests see it."""
    return {
        "SHIPYARD_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SHIPYARD_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    }


@pytest.fixture(scope="session")
def cluster(home: Path, job_env: dict[str, str]) -> Iterator[Any]:
    """A Ray cluster of this test session's own, stopped by its own PID at the end.

    4 logical CPUs on the machine's 2 cores: a small training job is mostly start-up and waiting,
    so two jobs' Ray Train workers (2 CPUs each) can overlap instead of queueing for resources.
    Its processes see the registry of the tests and the serving app's admin token.
    """
    from shipyard.compute.localray import LocalCluster

    env = {**job_env, "SHIPYARD_ADMIN_TOKEN": ADMIN_TOKEN, **SERVE_ENV}
    with LocalCluster(num_cpus=4, log_path=home / "ray-start.log", env=env) as c:
        yield c


@pytest.fixture(scope="session")
def dataset(home: Path) -> Path:
    from shipyard.demo import datagen

    datagen.write_dataset(home / "data", 8000, seed=0, files=3)
    return home / "data"


def write_config(path: Path, data_path: str, **sections: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "model": {"name": MODEL},
        "data": {
            "path": data_path, "target": "churned", "task": "binary",
            "drop": ["customer_id"], "time_column": "ts", "holdout": 0.25,
        },
        "train": {
            "num_workers": 2, "num_boost_round": 80, "early_stopping_rounds": 10,
            "checkpoint_every": 10, "params": {"max_depth": 5, "eta": 0.15},
        },
    }  # fmt: skip
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def job_result(out: str, tag: str = contract.RESULT_TAG) -> dict[str, Any]:
    """The JSON a job prints after `tag` (the contract's result line)."""
    result = contract.parse_result(out, tag)
    assert result is not None, f"no {tag} line in the job's output:\n{out[-5000:]}"
    return result


def submit(
    cluster: Any, job_env: dict[str, str], args: list[str]
) -> subprocess.CompletedProcess[str]:
    """The real `ray job submit` CLI, shipping this checkout as the job's runtime env."""
    from shipyard.compute.localray import ray_env
    from shipyard.compute.submit import submit_command

    cmd = submit_command(cluster.address, ["python", "-m", "jobs.train", *args], env_vars=job_env)
    return subprocess.run(cmd, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)


def run_job(
    cluster: Any, job_env: dict[str, str], args: list[str]
) -> subprocess.CompletedProcess[str]:
    """`python -m jobs.train` as its own driver, attached to the session's cluster."""
    return run_jobs(cluster, job_env, {"job": args})["job"]


def run_jobs(
    cluster: Any, job_env: dict[str, str], jobs: dict[str, list[str]]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Several `python -m jobs.train` drivers at once (most of a small job is start-up and
    waiting, which overlaps); output to files, never to pipes nobody reads."""
    import tempfile

    env = {**os.environ, **job_env}
    with tempfile.TemporaryDirectory(prefix="shipyard-jobs-") as tmp:
        running = {}
        for name, args in jobs.items():
            out, err = (open(Path(tmp) / f"{i}-{name}", "w+") for i in (1, 2))  # noqa: SIM115
            cmd = [sys.executable, "-m", "jobs.train", "--address", cluster.gcs_address, *args]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
            running[name] = (proc, cmd, out, err)
        done = {}
        for name, (proc, cmd, out, err) in running.items():
            try:
                proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
            out.seek(0)
            err.seek(0)
            done[name] = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
            out.close()
            err.close()
        return done


@pytest.fixture(scope="session")
def trained_job(
    cluster: Any, dataset: Path, job_env: dict[str, str], home: Path
) -> Iterator[dict[str, Any]]:
    """The session's training run through the real `ray job submit`, started in the background:
    a module that runs jobs of its own first requests this so that they overlap."""
    from shipyard.compute.localray import ray_env
    from shipyard.compute.submit import submit_command

    cfg = write_config(home / "train.yaml", str(dataset / "*.parquet"))
    cmd = submit_command(
        cluster.address, ["python", "-m", "jobs.train", "--config", str(cfg)], env_vars=job_env
    )
    with (home / "trained.log").open("w+") as log:  # a file, never a pipe nobody reads
        proc = subprocess.Popen(cmd, cwd=REPO, env=ray_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            yield {"proc": proc, "log": log, "config": cfg}
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="session")
def trained(trained_job: dict[str, Any]) -> dict[str, Any]:
    """One real training run through `ray job submit`; later tests inspect what it left."""
    proc = trained_job["proc"]
    proc.wait(timeout=600)
    trained_job["log"].seek(0)
    out = trained_job["log"].read()
    assert proc.returncode == 0, out[-5000:]
    return {"result": job_result(out), "output": out, "config": trained_job["config"]}


@pytest.fixture(scope="session")
def registry(job_env: dict[str, str]) -> Any:
    from shipyard.registry import Registry

    return Registry(job_env["MLFLOW_TRACKING_URI"])
