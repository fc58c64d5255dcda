"""Retraining on drift without Ray: when a job is submitted, the life of a request, approval,
and the redeploy that adds the approved version as a canary (fake job and Serve APIs)."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from serving.edge import status_of
from serving.retrain import RetrainCoordinator
from serving.settings import AppSettings
from shipyard.config.serving import RetrainSection, ServingConfig, parse_serving_config
from shipyard.contract import parse_result
from shipyard.errors import ConfigError, DeployFailed
from shipyard.monitoring.retrain import (
    RetrainConflict,
    Retrainer,
    drift_kinds,
    job_entrypoint,
    resolve_job_config,
    with_canary,
)

REPO = Path(__file__).resolve().parents[2]
FEATURES = {"variant": "control", "version": 3, "kinds": {"features": ["income"]}}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def retrainer(tmp_path: Path, clock: Clock | None = None, **section: Any) -> Retrainer:
    return Retrainer("churn", RetrainSection(**section), tmp_path / "state", clock=clock or Clock())


def test_one_request_at_a_time_then_a_cooldown(tmp_path: Path) -> None:
    clock = Clock()
    r = retrainer(tmp_path, clock, cooldown_s=600)
    first, why = r.consider(FEATURES)
    assert first is not None and why == "submitted" and first["status"] == "submitting"
    assert first["submission_id"].startswith("shipyard-retrain-churn-")
    again, why = r.consider(FEATURES)  # a lasting drift raises more triggers: no second job
    assert again is None and "submitting" in why
    r.submitted(first["id"])
    r.job_finished(first["id"], "FAILED", None, "boom")
    clock.t += 60
    assert r.consider(FEATURES)[1].startswith("cooldown")
    clock.t += 600
    assert r.consider(FEATURES)[0] is not None
    assert r.skipped == 2
    # The state is on disk: a restarted coordinator sees the same requests.
    assert [x["status"] for x in retrainer(tmp_path).requests] == ["failed", "submitting"]


def test_only_configured_drift_kinds_retrain(tmp_path: Path) -> None:
    r = retrainer(tmp_path)
    none, why = r.consider({**FEATURES, "kinds": {"quality": ["country"]}})
    assert none is None and "not in retrain.triggers" in why
    off = Retrainer("churn", RetrainSection(), tmp_path / "off", enabled=False)
    assert off.consider(FEATURES) == (None, "on_drift is alert")


def test_drift_kinds_tell_data_bugs_from_a_changed_world() -> None:
    event = {"scores": {
        "income": {"distribution": True, "flags": ["out_of_range"]},
        "country": {"distribution": True, "flags": ["unseen_categories"]},
        "age": {"distribution": False, "flags": ["missing_rate"]},
        "__prediction__": {"distribution": True, "flags": []},
    }}  # fmt: skip
    assert drift_kinds(event) == {
        "features": ["income"], "quality": ["country", "age"], "prediction": ["__prediction__"],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("job", "result", "status"),
    [
        ("SUCCEEDED", {"registered_version": 7, "gate_failures": []}, "awaiting_approval"),
        ("FAILED", {"registered_version": None, "gate_failures": ["auc below baseline"]},
         "gates_failed"),
        ("FAILED", None, "failed"),
        ("STOPPED", None, "failed"),
    ],
)  # fmt: skip
def test_a_finished_job_waits_for_approval_or_ends(
    tmp_path: Path, job: str, result: Any, status: str
) -> None:
    r = retrainer(tmp_path)
    req, _ = r.consider(FEATURES)
    assert req is not None
    r.submitted(req["id"])
    out = r.job_finished(req["id"], job, result, "exit 3")
    assert out is not None and out["status"] == status
    if status == "awaiting_approval":
        assert out["version"] == 7
        assert r.approve(req["id"], "alice")["status"] == "deploying"
        with pytest.raises(RetrainConflict, match="is deploying"):
            r.approve(req["id"], "alice")  # twice
    else:
        with pytest.raises(RetrainConflict, match="only a request awaiting_approval"):
            r.approve(req["id"], "alice")


def test_without_required_approval_the_policy_decides(tmp_path: Path) -> None:
    r = retrainer(tmp_path, require_approval=False)
    req, _ = r.consider(FEATURES)
    assert req is not None
    r.submitted(req["id"])
    out = r.job_finished(req["id"], "SUCCEEDED", {"registered_version": 9})
    assert out is not None
    assert out["status"] == "deploying" and "require_approval" in out["decided_by"]


def test_a_jobs_end_is_taken_once_and_never_undoes_a_persons_decision(tmp_path: Path) -> None:
    """Two polls can see the same job end (the coordinator's loop and one already running):
    the second must not turn an approval given in between back into awaiting_approval, and a
    job that ends after a person rejected it must not make the request anything else."""
    r = retrainer(tmp_path)
    req, _ = r.consider(FEATURES)
    assert req is not None
    r.submitted(req["id"])
    assert r.job_finished(req["id"], "SUCCEEDED", {"registered_version": 7}) is not None
    assert r.approve(req["id"], "alice")["status"] == "deploying"
    assert r.job_finished(req["id"], "SUCCEEDED", {"registered_version": 7}) is None
    assert r.get(req["id"])["status"] == "deploying" and r.get(req["id"])["decided_by"] == "alice"
    rb = retrainer(tmp_path / "b")
    other, _ = rb.consider(FEATURES)
    assert other is not None
    rb.submitted(other["id"])
    rb.reject(other["id"], "bob", "not now")
    assert rb.job_finished(other["id"], "STOPPED", None, "stopped") is None
    assert rb.get(other["id"])["status"] == "rejected"


def test_job_entrypoint_and_result() -> None:
    section = RetrainSection(job_config="x.yaml", data="s3://b/fresh/", overrides={"a.b": 3})
    cmd = job_entrypoint("/venv/bin/python", "churn", section, "/abs/x.yaml")
    assert cmd == (
        "/venv/bin/python -m jobs.train --config /abs/x.yaml --model-name churn "
        "--data s3://b/fresh/ --set a.b=3"
    )
    logs = 'noise\n\x1b[36m(pid=1)\x1b[0m SHIPYARD_RESULT {"registered_version": 4}\nbye\n'
    assert parse_result(logs) == {"registered_version": 4}
    assert parse_result("no result here") is None


def test_job_config_is_resolved_or_refused(tmp_path: Path) -> None:
    assert resolve_job_config("jobs/configs/demo.yaml", REPO) == str(
        REPO / "jobs/configs/demo.yaml"
    )
    with pytest.raises(ConfigError, match=r"retrain.job_config 'nope.yaml' is not a file"):
        resolve_job_config("nope.yaml", tmp_path)
    with pytest.raises(ConfigError, match="retrain.job_config is unset"):
        parse_serving_config({**APP, "on_drift": "retrain", "retrain": {}})
    with pytest.raises(ConfigError, match="drift.enabled is false"):
        parse_serving_config(
            {
                **APP,
                "on_drift": "retrain",
                "drift": {"enabled": False},
                "retrain": {"job_config": "x.yaml", "triggers": ["features"]},
            }
        )
    with pytest.raises(ConfigError, match="retrain.triggers"):
        parse_serving_config({**APP, "retrain": {"triggers": ["drift"]}})


APP: dict[str, Any] = {
    "model": "churn",
    "variants": [
        {"name": "control", "version": "champion", "weight": 90, "num_cpus": 0.25,
         "num_replicas": 2},
        {"name": "treatment", "version": 2, "weight": 10, "faults": {"error_rate": 0.1}},
        {"name": "mirror", "version": 2, "shadow": 20},
    ],
}  # fmt: skip


def test_the_canary_joins_with_the_live_traffic_kept() -> None:
    live = {"weights": {"control": 70, "treatment": 0, "mirror": 0}, "shadow": {"mirror": 20},
            "control": "control"}  # fmt: skip
    args = with_canary(APP, live, 7, 5.0)
    cfg = ServingConfig.model_validate(args)  # still a valid app
    v = {x.name: x for x in cfg.variants}
    assert v["treatment"].weight == 0  # a rollback since the deploy is not undone
    assert v["control"].weight == 70 and v["mirror"].shadow == 20
    new = v["retrain-v7"]
    assert (new.version, new.weight, new.num_cpus, new.num_replicas) == (7, 5.0, 0.25, 2)
    assert new.faults.error_rate == 0  # resources are copied, fault drills are not
    assert APP["variants"][0]["weight"] == 90  # the input is not modified


def test_the_redeploy_pins_every_variant_to_the_version_it_serves() -> None:
    """An alias resolved at the last deploy may have moved or gone since (a rollback removes
    `challenger`, a promotion moves `champion`): the redeploy keeps what each variant serves."""
    live = {"weights": {"control": 90, "treatment": 10}, "control": "control"}
    args = with_canary(APP, live, 7, 5.0, {"control": 1, "treatment": 2, "mirror": 2})
    v = {x.name: x for x in ServingConfig.model_validate(args).variants}
    assert (v["control"].version, v["treatment"].version, v["mirror"].version) == (1, 2, 2)
    assert v["retrain-v7"].version == 7
    unpinned = with_canary(APP, live, 7, 5.0)  # no record of what is served: as configured
    assert unpinned["variants"][0]["version"] == "champion"


class FakeJobs:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, dict[str, Any]]] = []
        self.state = "RUNNING"
        self.log = ""
        self.stopped: list[str] = []

    def submit(self, entrypoint: str, submission_id: str, runtime_env: dict[str, Any]) -> None:
        self.submitted.append((entrypoint, submission_id, runtime_env))

    def status(self, submission_id: str) -> tuple[str, str]:
        return self.state, ""

    def logs(self, submission_id: str) -> str:
        return self.log

    def stop(self, submission_id: str) -> None:
        self.stopped.append(submission_id)


class FakeServe:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        app = {
            "name": "shipyard",
            "import_path": "serving.app:build_app",
            "args": APP,
            "deployments": [{"name": "router", "user_config": {"weights": {"control": 1}}}],
        }
        self.config: dict[str, Any] = {"applications": [app], "http_options": {"port": 8000}}
        self.deployed: list[dict[str, Any]] = []  # fmt: skip

    def current(self) -> dict[str, Any]:
        copied: dict[str, Any] = json.loads(json.dumps(self.config))
        return copied

    def deploy(self, config: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("dashboard unreachable")
        self.deployed.append(config)


class Store:
    def __init__(self) -> None:
        self.snapshot = self

    async def _snap(self) -> dict[str, Any]:
        return {"weights": {"control": 90, "treatment": 10, "mirror": 0},
                "shadow": {"mirror": 20}, "control": "control"}  # fmt: skip

    def remote(self) -> Any:
        return self._snap()


def coordinator(tmp_path: Path, serve: FakeServe, jobs: FakeJobs, **versions: int) -> Any:
    config = {**APP, "on_drift": "retrain",
              "retrain": {"job_config": str(REPO / "jobs/configs/demo.yaml"),
                          "data": "/data/fresh", "poll_s": 0.01}}  # fmt: skip
    app = AppSettings(config=ServingConfig.model_validate(config),
                      versions={"control": 1, "treatment": 2, "mirror": 2, **versions},
                      state_uri=str(tmp_path), review_dir=str(tmp_path),
                      events_path=str(tmp_path / "events.jsonl"))  # fmt: skip
    return RetrainCoordinator(app, Store(), jobs, serve, python="py")


def test_coordinator_submits_waits_for_approval_then_redeploys(tmp_path: Path) -> None:
    jobs, serve = FakeJobs(), FakeServe()

    async def run() -> dict[str, Any]:
        c = coordinator(tmp_path, serve, jobs)
        answer = await c.on_drift(FEATURES)
        assert answer["submitted"] and len(jobs.submitted) == 1
        entrypoint, sid, env = jobs.submitted[0]
        assert (
            entrypoint.startswith("py -m jobs.train --config ")
            and sid in c.report()["requests"][0]["submission_id"]
        )
        assert entrypoint.endswith("--model-name churn --data /data/fresh")
        assert json.loads(env["env_vars"]["SHIPYARD_TRIGGER"])["kinds"] == FEATURES["kinds"]
        await c.poll()
        assert c.report()["requests"][0]["status"] == "running"
        jobs.state, jobs.log = "SUCCEEDED", 'SHIPYARD_RESULT {"registered_version": 7}'
        await c.poll()
        request = c.report()["requests"][0]
        assert request["status"] == "awaiting_approval" and request["version"] == 7
        assert serve.deployed == []  # nothing reaches traffic before a person approves
        out: dict[str, Any] = await c.approve(request["id"], "alice")
        assert out["status"] == "deploying" and out["decided_by"] == "alice"
        return out

    request = asyncio.run(run())
    (config,) = serve.deployed
    app = config["applications"][0]
    names = {v["name"]: v for v in app["args"]["variants"]}
    assert names["retrain-v7"]["weight"] == 5.0 and names["retrain-v7"]["version"] == 7
    assert app["deployments"][0]["user_config"]["weights"]["retrain-v7"] == 5.0
    assert config["http_options"] == {"port": 8000}
    assert Path(request["serve_config"]).exists()
    # Serve restarts the app with the new variant: the new coordinator marks the request live.
    again = coordinator(tmp_path, serve, jobs, **{"retrain-v7": 7})
    assert again.report()["requests"][0]["status"] == "live"
    kinds = [
        json.loads(line)["kind"] for line in (tmp_path / "events.jsonl").read_text().splitlines()
    ]
    assert kinds == ["retrain_submitted", "retrain_awaiting_approval", "retrain_approved",
                     "retrain_deploying", "retrain_live"]  # fmt: skip


def test_a_failed_redeploy_leaves_traffic_and_waits_again(tmp_path: Path) -> None:
    jobs, serve = FakeJobs(), FakeServe(fail=True)

    async def run() -> tuple[DeployFailed, dict[str, Any]]:
        c = coordinator(tmp_path, serve, jobs)
        await c.on_drift(FEATURES)
        jobs.state, jobs.log = "SUCCEEDED", 'SHIPYARD_RESULT {"registered_version": 7}'
        await c.poll()
        rid = c.report()["requests"][0]["id"]
        with pytest.raises(DeployFailed) as failed:
            await c.approve(rid, "alice")
        return failed.value, c.report()["requests"][0]

    answer, request = asyncio.run(run())
    assert status_of(answer) == 502 and "live traffic unchanged" in answer.message
    assert request["status"] == "awaiting_approval" and "dashboard unreachable" in request["error"]
    assert serve.deployed == []


def test_rejecting_a_request(tmp_path: Path) -> None:
    jobs, serve = FakeJobs(), FakeServe()

    async def run() -> dict[str, Any]:
        c = coordinator(tmp_path, serve, jobs)
        await c.on_drift(FEATURES)
        rid = c.report()["requests"][0]["id"]
        out: dict[str, Any] = await c.reject(rid, "bob", "trained on a holiday week")
        with pytest.raises(RetrainConflict) as again:
            await c.approve(rid, "alice")
        assert status_of(again.value) == 409
        return out

    request = asyncio.run(run())
    assert request["status"] == "rejected" and request["reason"] == "trained on a holiday week"
    assert jobs.stopped == [request["submission_id"]]  # a running job is not left to finish
    assert serve.deployed == []
