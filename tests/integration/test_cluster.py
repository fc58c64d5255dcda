"""The local autoscaling cluster (`make cluster-up`): scale from zero, spot fallback, preemption.

One cluster for the module: a head with no CPUs, fake spot and on-demand worker types (1 CPU
each), autoscaler v2 and Shipyard's spot fallback controller. The tests run in order: a training
job that scales the cluster up from zero and loses its spot node mid-run; a tuning study that
loses its driver and, resumed with `--resume`, a trial's node; the idle scale-down to zero; a
spot outage (on-demand within a minute).
"""

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard import contract
from shipyard.compute.localcluster import AutoscalingLocalCluster, preempt, worker_nodes
from shipyard.compute.localray import ray_env
from shipyard.compute.submit import submit_command
from shipyard.events import EventLog
from shipyard.training.tuning import PROGRESS_FILE
from tests.conftest import Job, job_result, write_config

IDLE_S = 20
TRAIN_ROUNDS = 3000  # the spot-loss training run (8,000 rows, one worker: 5-10 ms a round)
EVERY = 100  # its checkpoint interval
# Per tuning trial: long enough to lose its node in the middle (10-40 s a trial on 2 busy cores;
# each step below waits for a trial in the first half of its checkpoints, whatever the speed).
ROUNDS, CKPT_EVERY = 2000, 200
TRIALS = 4  # two waves of two: trials are still to run when the driver is killed


@pytest.fixture(scope="module")
def acluster(home: Path, job_env: dict[str, str]) -> Iterator[AutoscalingLocalCluster]:
    c = AutoscalingLocalCluster(
        home / "autoscaling", max_workers_per_type=6, idle_timeout_s=IDLE_S, env=job_env
    )
    with c:
        yield c


def wait_for(what: str, fn: Any, timeout_s: float, every_s: float = 0.5, seen: Any = None) -> Any:
    """`seen()`: what to show when it times out (the state the wait was watching)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every_s)
    shown = f"; seen: {seen()}" if seen is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{shown}")


def live_actor(cluster: AutoscalingLocalCluster, class_name: str) -> tuple[str, int]:
    """(node id, pid) of a live actor of this class (waits for one)."""
    from ray.util.state import list_actors

    seen: list[tuple[str, str | None]] = []

    def find() -> tuple[str, int] | None:
        actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000)
        seen[:] = [(a.class_name, a.node_id) for a in actors]
        mine = [a for a in actors if a.class_name == class_name]
        return (str(mine[0].node_id), int(mine[0].pid or 0)) if mine else None

    try:
        return wait_for(f"a live {class_name}", find, 30)  # type: ignore[no-any-return]
    except AssertionError as err:
        raise AssertionError(f"{err}; live actors: {seen}") from None


def gone(pid: int) -> bool:
    """The process has exited (no such process, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def latest_checkpoint_rounds(root: Path) -> int:
    from ray.train import Checkpoint
    from ray.train.xgboost import RayTrainReportCallback

    best = 0
    for d in root.glob("**/checkpoint_*"):
        try:
            booster = RayTrainReportCallback.get_model(Checkpoint(str(d)))
        except Exception:  # being written right now
            continue
        best = max(best, booster.num_boosted_rounds())
    return best


def test_training_scales_from_zero_and_survives_losing_a_spot_node(
    acluster: AutoscalingLocalCluster, job_env: dict[str, str], dataset: Path, home: Path
) -> None:
    assert worker_nodes(acluster.gcs_address) == []  # nothing runs until there is work
    ckpt = home / "cluster-checkpoints"
    cfg = write_config(
        home / "cluster-train.yaml",
        str(dataset / "*.parquet"),
        model={"name": "churn-cluster"},
        train={
            # Long enough (15-30 s of boosting on 2 busy cores) that the node goes mid-run, not
            # after the end; no early stop (the registered booster is trimmed to its best round).
            "num_workers": 1, "num_boost_round": TRAIN_ROUNDS,
            "early_stopping_rounds": TRAIN_ROUNDS, "checkpoint_every": EVERY,
            "storage_path": str(ckpt), "max_failures": 0,
        },
    )  # fmt: skip
    cmd = submit_command(
        acluster.address, ["python", "-m", "jobs.train", "--config", str(cfg)], env_vars=job_env
    )
    job = Job(cmd, ray_env(), home / "cluster-train")
    try:
        # Two checkpoints from the first half of the run, so most of it is still to come when
        # the node goes (whatever the machine's speed). The newest one on disk may not be
        # acknowledged yet: the worker writes it, then Ray Train's controller registers it when
        # it next polls the worker, and a node lost in between loses that one. The one before
        # it is the one the run must not lose.
        wait_for(
            "two checkpoints in the first half of the run",
            lambda: 2 * EVERY <= latest_checkpoint_rounds(ckpt) <= TRAIN_ROUNDS // 2, 240,
            every_s=0.2,
        )  # fmt: skip
        nodes = worker_nodes(acluster.gcs_address)
        assert nodes and {n["node_type"] for n in nodes} == {"cpu-spot"}, nodes
        before = latest_checkpoint_rounds(ckpt) - EVERY
        victim, worker = live_actor(acluster, "RayTrainWorker")  # the spot node it runs on
        preempt(acluster.gcs_address, acluster.proc.pid, victim, notice_s=1)  # type: ignore[union-attr]
        # The node went mid-run with the training worker on it: killed here or, on a busy
        # machine, stopped first by Ray Train's preemption watcher on the drain notice, the
        # drained node then released by the autoscaler before the kill found it.
        wait_for(
            "the training worker and its node to be gone",
            lambda: (
                gone(worker)
                and victim not in {n["node_id"] for n in worker_nodes(acluster.gcs_address)}
            ),
            60,
        )
    finally:
        done = job.finish(timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    result = job_result(out)
    training = result["training"]
    # Resumed from a checkpoint at least as recent as the last acknowledged one before the node
    # went, so at most two checkpoint intervals (200 of 3,000 rounds) were lost; max_failures=0
    # shows the drained node counted as a preemption, not a failure.
    assert training["resumed_from_round"] >= before > 0, (training, before)
    assert training["rounds"] > training["resumed_from_round"]
    assert result["registered_version"] >= 1


def trial_rows(study: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial's reported rows so far, by trial directory (a line being written is left
    for the next look)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(study.glob("*/result.json")):
        rows[p.parent.name] = []
        for line in p.read_text().splitlines():
            try:
                rows[p.parent.name].append(json.loads(line))
            except ValueError:
                break
    return rows


def finished_trials(study: Path, rounds: int) -> int:
    return sum(bool(r) and r[-1].get("rounds") == rounds for r in trial_rows(study).values())


def newest_checkpoint(trial_dir: Path) -> tuple[float, dict[str, Any]] | None:
    """(written at, progress) of a trial's newest checkpoint: its rounds, node and resume point,
    which the trial writes itself (None: none yet, or the newest is still being written)."""
    ckpts = sorted(trial_dir.glob("checkpoint_*"), key=lambda c: int(c.name.split("_")[1]))
    if not ckpts:
        return None
    try:
        progress = json.loads((ckpts[-1] / PROGRESS_FILE).read_text())
        return ckpts[-1].stat().st_mtime, progress
    except (OSError, ValueError):
        return None


def running_trial(study: Path, rounds: int, since: float = 0.0) -> tuple[str, str] | None:
    """(trial, node) of a trial whose newest checkpoint, written since `since`, is from the
    first half of its rounds: most of its work is still to come.

    Read from the checkpoints, which the trial writes to storage itself: the rows in result.json
    pass through the driver, which writes them late (a resumed driver once wrote none of a whole
    trial's rows within its 7 s)."""
    for trial_dir in sorted(study.glob("*/")):  # no study directory yet: no trial
        newest = newest_checkpoint(trial_dir)
        if newest is not None and newest[0] >= since and newest[1]["rounds"] < rounds // 2:
            return trial_dir.name, str(newest[1]["node_id"])
    return None


def continued_elsewhere(study: Path, trial: str, lost_node: str) -> bool:
    """The trial checkpointed again on another node, restarted from one of its checkpoints."""
    newest = newest_checkpoint(study / trial)
    return (
        newest is not None
        and newest[1]["node_id"] != lost_node
        and (newest[1]["resumed_from"] or 0) > 0
    )


def test_tuning_survives_a_lost_node_and_a_killed_driver(
    acluster: AutoscalingLocalCluster, job_env: dict[str, str], home: Path
) -> None:
    from shipyard.demo import datagen

    # Enough rows and rounds that a trial runs for a while (on 8,000 rows a trial takes a
    # second, too short to lose its node in the middle of it).
    data = home / "data-tune"
    datagen.write_dataset(data, 40000, seed=1, files=2)
    storage = home / "cluster-tune"
    cfg = write_config(
        home / "cluster-tune.yaml",
        str(data / "*.parquet"),
        model={"name": "churn-cluster-tune"},
        # The best trial's final training, after the losses: in the driver's own process (Ray
        # Train's local mode), not on a worker group that would take ~18 s to start.
        train={"num_workers": 0},
        tune={
            "num_samples": TRIALS, "scheduler": "fifo", "max_rounds": ROUNDS, "report_every": 20,
            "checkpoint_every": CKPT_EVERY, "max_concurrent_trials": 2, "train_best": True,
            "storage_path": str(storage), "name": "study", "max_failures": 3,
        },
    )  # fmt: skip
    study = storage / "study"
    env = {**os.environ, **job_env}
    driver = [sys.executable, "-m", "jobs.tune", "--config", str(cfg)]
    driver += ["--address", acluster.gcs_address]
    # The order does not depend on the machine's speed: each step waits for an unfinished trial
    # that has just written a checkpoint, so most of its work is still left.
    # 1. The driver is killed outright while the first wave runs (trials in flight die with it).
    first = Job(driver, env, home / "cluster-tune-first")
    try:
        wait_for("a checkpointed trial", lambda: running_trial(study, ROUNDS), 300)
        first.proc.send_signal(signal.SIGKILL)
    finally:
        first.finish(timeout=30)
    assert finished_trials(study, ROUNDS) < TRIALS
    # 2. `--resume` continues the study. A spot node running one of its trials is reclaimed
    # once that trial has a checkpoint: Tune retries the trial on another node from its
    # checkpoint, under the resumed driver.
    resumed_at = time.time()
    second = Job([*driver, "--resume"], env, home / "cluster-tune-resumed")
    try:
        trial, victim = wait_for(
            "a checkpointed trial after the resume",
            lambda: running_trial(study, ROUNDS, since=resumed_at), 300,
        )  # fmt: skip
        killed = preempt(acluster.gcs_address, acluster.proc.pid, victim, notice_s=1)  # type: ignore[union-attr]
        wait_for(
            "the trial continuing from its checkpoint on another node",
            lambda: continued_elsewhere(study, trial, victim), 240,
            seen=lambda: {"trial": trial, "lost node": victim, "pids killed": killed,
                          "workers": worker_nodes(acluster.gcs_address),
                          "newest checkpoints": {d.name[:17]: newest_checkpoint(d)
                                                 for d in sorted(study.glob("*/"))}},
        )  # fmt: skip
    finally:
        resumed = second.finish(timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-6000:]
    result = job_result(out, contract.TUNE_RESULT_TAG)
    trials = result["trial_summaries"]
    assert len(trials) == TRIALS, trials
    assert result["errors"] == 0, [t["error"] for t in trials if t["error"]]
    assert all(t["rounds"] == ROUNDS for t in trials), trials  # every trial ran to the end
    # Every checkpoint was kept while the study ran (so a resume never points at a deleted
    # one); once it had finished, each trial kept only its newest.
    trial_dirs = [d for d in (storage / "study").iterdir() if (d / "result.json").exists()]
    assert len(trial_dirs) == TRIALS
    assert [len(list(d.glob("checkpoint_*"))) for d in trial_dirs] == [1] * TRIALS
    # Trials cut short by the kill continued from their checkpoints instead of starting over.
    assert any(t["resumed_from"] and t["resumed_from"] > 0 for t in trials), trials
    # The study is one MLflow run with every trial as a child run, logged once across the resume.
    from shipyard.registry import Registry

    reg = Registry(job_env["MLFLOW_TRACKING_URI"])
    experiment = reg.client.get_experiment_by_name("shipyard/churn-cluster-tune")
    assert experiment is not None
    exp = experiment.experiment_id
    children = reg.client.search_runs(
        [exp], f"tags.mlflow.parentRunId = '{result['study_run_id']}'"
    )
    assert len(children) == TRIALS
    # The best trial's parameters went through jobs.train's own path (gates, registry).
    assert result["registered_version"] == 1 and result["gate_failures"] == []
    best_run = reg.client.get_run(reg.get_version("churn-cluster-tune", 1).run_id)
    for k, v in result["best"]["config"].items():
        assert float(best_run.data.params[f"train.params.{k}"]) == pytest.approx(float(v))


def test_idle_workers_scale_back_to_zero(acluster: AutoscalingLocalCluster) -> None:
    assert worker_nodes(acluster.gcs_address)  # nodes from the tests above
    wait_for("scale-down to zero", lambda: worker_nodes(acluster.gcs_address) == [], IDLE_S + 90, 1)


def test_spot_outage_falls_back_to_on_demand_within_a_minute(
    acluster: AutoscalingLocalCluster,
) -> None:
    import ray

    assert worker_nodes(acluster.gcs_address) == []
    acluster.outage(True)
    try:
        ray.init(address=acluster.gcs_address, log_to_driver=False)

        @ray.remote(num_cpus=1)  # type: ignore[untyped-decorator]
        def where() -> str:
            return str(ray.get_runtime_context().get_node_id())

        t0 = time.monotonic()
        node_id = ray.get(where.remote(), timeout=120)
        took = time.monotonic() - t0
        types = {n["node_id"]: n["node_type"] for n in worker_nodes(acluster.gcs_address)}
        assert types[node_id] == "cpu-ondemand"
        assert took < 60, f"fallback took {took:.0f}s"
        # ... because spot launches failed and the controller put on-demand first.
        events = EventLog(acluster.events_path).read()
        assert any(e["kind"] == "spot_fallback" and "cpu-spot" in e["message"] for e in events)
    finally:
        ray.shutdown()
        acluster.outage(False)
