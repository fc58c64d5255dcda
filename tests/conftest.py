"""Markers by folder: tests/unit -> unit, tests/integration -> integration, tests/model -> model;
tests/integration/test_cluster.py is also `cluster` (the multi-node autoscaling cluster)."""

from __future__ import annotations

import os
from typing import Any

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
        if item.path.name == "test_cluster.py":
            item.add_marker(pytest.mark.cluster)


def ray_group(nodeid: str) -> str | None:
    """Which Ray cluster a test runs on, for pytest-xdist: "session" for the tests on the
    session's cluster (one cluster, one training run, one serving app), "cluster" for the
    autoscaling cluster's drills, "nodes" for the node-loss drill's multi-node cluster, None for
    a unit test (no cluster)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/integration/test_cluster.py"):
        return "cluster"
    if path.startswith("tests/integration/test_node_loss.py"):
        return "nodes"  # a multi-node cluster of its own, beside the session's tests
    if path.startswith(("tests/integration/", "tests/model/")):
        return "session"
    return None


# The autoscaling cluster's last tests only wait (the idle scale-down, a spot outage's
# fallback to on-demand): other tests may run beside them, not beside the drills.
CLUSTER_TAIL = (
    "test_idle_workers_scale_back_to_zero",
    "test_spot_outage_falls_back_to_on_demand_within_a_minute",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs on two pytest-xdist workers: first the autoscaling cluster's drills,
    alone; then the session's tests on one worker and, on the other, the cluster's waiting tail,
    the node-loss drill (its own cluster) and the unit tests. Every test of a Ray group runs in one worker, in file order, so each
    cluster is started once. The drills run alone because beside other work they lose the races
    they are built on (tried with the unit tests beside them: in 3 runs of 4 a node lost mid-run
    was released before the kill, a resumed run restarted from round 0, or a tuning trial did not
    restart within 4 minutes). (pytest-xdist's own `loadgroup` cannot group on pytest 9: it
    renames node ids through an attribute pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RayGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return ray_group(nodeid) or nodeid

        def _drills_left(self) -> bool:
            """Cluster tests other than the waiting tail, queued or not yet done."""
            return "cluster" in self.workqueue or any(
                not done and nodeid.rsplit("::", 1)[-1] not in CLUSTER_TAIL
                for work in self.assigned_work.values()
                for nodeid, done in work.get("cluster", {}).items()
            )

        def _assign_work_unit(self, node: Any) -> None:
            queue = self.workqueue
            if "session" in queue:  # the long one first, once the drills are done
                queue.move_to_end("session", last=False)
            if "cluster" in queue:
                queue.move_to_end("cluster", last=False)
            if next(iter(queue)) != "cluster" and self._drills_left():
                # Held until the drills are done. Their worker, asking for more, has nothing
                # else to do: it runs what it holds and stops (a worker runs its last test only
                # once it knows the next one, or that there is none).
                if "cluster" in self.assigned_work[node] and not node.shutting_down:
                    node.shutdown()
                return
            if next(iter(queue)) == "session" and "cluster" in self.assigned_work[node]:
                idle = [n for n in self.nodes if n is not node and not n.shutting_down]
                node = idle[0] if idle else node  # beside the cluster's tail, not after it
            super()._assign_work_unit(node)

        def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            for other in self.nodes:  # a worker held idle while the drills ran
                if (
                    self.workqueue
                    and not self._drills_left()
                    and not other.shutting_down
                    and not self._pending_of(self.assigned_work[other])
                ):
                    self._assign_work_unit(other)

    return RayGroups(config, log)


# --- Session fixtures shared by integration and model tests (created only when requested) ----
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from shipyard import contract  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "churn-test"
ADMIN_TOKEN = "test-admin-token"
# Serve runs the way Shipyard deploys it (see docs/serving.md, "Serve and A/B test"; benchmarks).
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# A job's idle Ray workers are kept until the job ends. Ray's defaults (a soft limit of one idle
# worker per CPU, the rest killed after 1 s idle) made eight jobs at once on 4 logical CPUs start
# a new worker process (~1.5 CPU-s of imports) for nearly every Ray Data stage: 22 worker
# processes for the seven real tables' jobs against 13 with these, 45 s instead of 55 s.
WORKER_POOL_ENV = {
    "RAY_num_workers_soft_limit": "64",
    "RAY_idle_worker_killing_time_threshold_ms": "600000",
}


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
def cluster(home: Path, job_env: dict[str, str], s3_server: Any) -> Iterator[Any]:
    """A Ray cluster of this test session's own, stopped by its own PID at the end.

    4 logical CPUs on the machine's 2 cores: a small training job is mostly start-up and waiting,
    so two jobs' Ray Train workers (2 CPUs each) can overlap instead of queueing for resources.
    Its processes see the registry of the tests, the serving app's admin token and the
    session's S3 server (serving state lives there, as on a cluster).
    """
    from shipyard.compute.localray import LocalCluster

    env = {**job_env, "SHIPYARD_ADMIN_TOKEN": ADMIN_TOKEN, **SERVE_ENV, **WORKER_POOL_ENV,
           **s3_server.env}  # fmt: skip
    with LocalCluster(num_cpus=4, log_path=home / "ray-start.log", env=env) as c:
        yield c


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An S3-compatible server of this session's own (moto's standalone server, 127.0.0.1)."""
    from tests.s3server import MotoServer

    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_uri(s3_server: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the test bucket, with the environment that reaches it."""
    import re
    import uuid

    from tests.s3server import BUCKET

    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:40]
    return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


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
        "fairness": {"sensitive": ["country"]},
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


class Job:
    """A job started in the background: stdout and stderr go to files (a pipe nobody reads
    fills up and blocks the job in a print), read back by `finish`."""

    def __init__(self, cmd: list[str], env: dict[str, str], logs: Path) -> None:
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = cmd
        self.out = open(f"{logs}.out", "w+")  # noqa: SIM115 (closed by finish)
        self.err = open(f"{logs}.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self.out, stderr=self.err, text=True
        )
        self.done: subprocess.CompletedProcess[str] | None = None

    def stop(self) -> None:
        """Kill the job if it is still running (a teardown: only what this test started)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def finish(self, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Wait for the job; its outcome (the same one to every caller: several modules may
        wait for one session job)."""
        if self.done is not None:
            return self.done
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        self.out.seek(0)
        self.err.seek(0)
        self.done = subprocess.CompletedProcess(
            self.cmd, self.proc.returncode, self.out.read(), self.err.read()
        )
        self.out.close()
        self.err.close()
        return self.done


def submitted(cluster: Any, job_env: dict[str, str], args: list[str], logs: Path) -> Job:
    """The real `ray job submit` CLI, shipping this checkout as the job's runtime env."""
    from shipyard.compute.localray import ray_env
    from shipyard.compute.submit import submit_command

    cmd = submit_command(cluster.address, ["python", "-m", "jobs.train", *args], env_vars=job_env)
    return Job(cmd, ray_env(), logs)


def driver(cluster: Any, job_env: dict[str, str], args: list[str], logs: Path) -> Job:
    """`python -m jobs.train` as its own driver, attached to the session's cluster."""
    cmd = [sys.executable, "-m", "jobs.train", "--address", cluster.gcs_address, *args]
    return Job(cmd, {**os.environ, **job_env}, logs)


def run_jobs(
    cluster: Any, job_env: dict[str, str], jobs: dict[str, list[str]]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Several `python -m jobs.train` drivers at once (most of a small job is start-up and
    waiting, which overlaps)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="shipyard-jobs-") as tmp:
        running = {name: driver(cluster, job_env, args, Path(tmp) / name)
                   for name, args in jobs.items()}  # fmt: skip
        return {name: job.finish() for name, job in running.items()}


@pytest.fixture(scope="session")
def session_jobs(
    cluster: Any, dataset: Path, job_env: dict[str, str], home: Path
) -> Iterator[dict[str, Any]]:
    """The session's own training run and the learning-curve job, both through the real
    `ray job submit`, started together in the background: most of a small job is start-up and
    waiting, so they overlap each other and the modules that request this first (data prep,
    learning curve, the other tasks' trainings). Their tests wait for them (`Job.finish`)."""
    from shipyard.compute.localray import ray_env
    from shipyard.compute.submit import submit_command

    cfg = write_config(home / "train.yaml", str(dataset / "*.parquet"))
    trained = submitted(cluster, job_env, ["--config", str(cfg)], home / "jobs" / "trained")
    curve_cfg = write_config(
        home / "curve.yaml", str(dataset / "*.parquet"), model={"name": "churn-curve"}
    )
    entry = ["python", "-m", "jobs.learning_curve", "--config", str(curve_cfg)]
    entry += ["--fractions", "0.1,0.25,0.5,1.0", "--repeats", "1"]
    curve = Job(submit_command(cluster.address, entry, env_vars=job_env), ray_env(),
                home / "jobs" / "curve")  # fmt: skip
    yield {"trained": trained, "config": cfg, "curve": curve}
    for job in (trained, curve):
        job.stop()


@pytest.fixture(scope="session")
def trained(session_jobs: dict[str, Any]) -> dict[str, Any]:
    """One real training run through `ray job submit`; later tests inspect what it left."""
    proc = session_jobs["trained"].finish()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return {"result": job_result(out), "output": out, "config": session_jobs["config"]}


@pytest.fixture(scope="session")
def later_jobs(
    trained: dict[str, Any], cluster: Any, job_env: dict[str, str], registry: Any, home: Path
) -> Iterator[dict[str, Any]]:
    """Two more runs of the session's model, at once, each trained in its own process (Ray
    Train's local mode; the first run trained on workers): a second candidate through `ray job
    submit`, and a plain driver whose gates fail. (Started beside the serving module instead,
    they slowed its deploy and its load tests by as much as they saved.)"""
    cfg = str(trained["config"])
    aliases = registry.aliases(MODEL)
    local = ["--set", "train.num_workers=0"]  # in the job's own process: no worker group to start
    second = submitted(cluster, job_env, ["--config", cfg, "--set", "train.params.eta=0.3", *local],
                       home / "jobs" / "second")  # fmt: skip
    gated = driver(cluster, job_env, ["--config", cfg, "--set", "gates.baseline_margin=0.5", *local],
                   home / "jobs" / "gated")  # fmt: skip
    yield {"second": second, "gated": gated, "aliases_before": aliases}
    for job in (second, gated):
        job.stop()


@pytest.fixture(scope="session")
def real_jobs(
    cluster: Any, job_env: dict[str, str], registry: Any, home: Path
) -> Iterator[dict[str, Job]]:
    """Training runs on real public tables (tests/realdata.py), started in the background as
    drivers by the first module that needs them (the other tasks' trainings run beside them)."""
    from tests import realdata

    registry.client.search_experiments(max_results=1)  # the store exists before the jobs race
    configs = realdata.write_runs(home / "real")
    jobs = {name: driver(cluster, job_env, ["--config", str(cfg)], home / "jobs" / name)
            for name, cfg in configs.items()}  # fmt: skip
    yield jobs
    for job in jobs.values():
        job.stop()


@pytest.fixture(scope="session")
def registry(job_env: dict[str, str]) -> Any:
    from shipyard.registry import Registry

    return Registry(job_env["MLFLOW_TRACKING_URI"])


def serve_deploy(address: str, args: dict[str, Any], path: Path) -> int:
    """`serve deploy` of a config file (written to `path`) with one Shipyard app, "shipyard" at
    "/", built from `args` on the cluster; Serve's HTTP on a free 127.0.0.1 port, returned."""
    from shipyard.compute.localray import free_port, ray_env

    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "shipyard", "route_prefix": "/",
                          "import_path": "serving.app:build_app", "args": args}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve_bin = str(Path(sys.executable).with_name("serve"))
    subprocess.run([serve_bin, "deploy", str(path), "--address", address],
                   env=ray_env(), check=True, capture_output=True, timeout=120)  # fmt: skip
    return port
