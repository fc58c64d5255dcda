"""The replica-side feeder and the drift actor as plain objects (no Ray): a dead or slow actor
never blocks a prediction and its rows are counted as dropped; a restarted actor resumes from
its saved state; drift raises events."""

import asyncio
import contextlib
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.drift import DriftActor, DriftFeeder
from serving.settings import AppSettings
from shipyard.config.serving import DriftSection, ServingConfig
from shipyard.demo import datagen
from shipyard.events import EventLog
from shipyard.monitoring.drift import profile_of_frame
from tests.unit.test_drift import CATEGORICAL, NUMERIC, feed_of


def batch_of(n: int, seed: int, scenario: str = "none") -> tuple[dict[str, np.ndarray], Any]:
    df = datagen.generate(n, seed=seed, scenario=scenario)
    return feed_of(df), np.full(n, 0.3)


class Sink:
    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.batches: list[dict[str, Any]] = []
        self.fail, self.delay_s = fail, delay_s

    async def __call__(self, batch: dict[str, Any]) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("ActorDiedError: the drift actor is dead")
        self.batches.append(batch)


def test_feeder_ships_buffered_rows_in_batches() -> None:
    async def run() -> Sink:
        sink = Sink()
        feeder = DriftFeeder(sink, DriftSection(batch_rows=250, flush_interval_s=0.05))
        for i in range(10):
            feeder.add(*batch_of(100, seed=i))
            await asyncio.sleep(0)
        feeder.add_type_error("age")
        await feeder.flush()
        assert feeder.stats() == {"buffered": 0, "sent": 1000, "dropped": 0}
        return sink

    sink = asyncio.run(run())
    assert sum(b["rows"] for b in sink.batches) == 1000
    assert sum(len(b["feed"]["age"]) for b in sink.batches) == 1000
    assert sum(b["type_errors"].get("age", 0) for b in sink.batches) == 1
    assert len(sink.batches) < 10  # batched, not one send per request


def test_a_dead_actor_costs_rows_not_predictions() -> None:
    sink = Sink(fail=True)
    calls: list[int] = []

    def counted(batch: dict[str, Any]) -> Any:  # counts each send when it is made
        calls.append(1)
        return sink(batch)

    async def run() -> DriftFeeder:
        feeder = DriftFeeder(counted, DriftSection(batch_rows=100, flush_interval_s=0.01))
        for i in range(20):
            batch = batch_of(50, seed=i)
            sent = len(calls)
            # What a request does: a plain call that never sends to the actor itself (the
            # feeder's task does), so it cannot wait for it, whatever became of earlier sends.
            feeder.add(*batch)
            assert len(calls) == sent
            await asyncio.sleep(0.005)
        await feeder.flush()
        return feeder

    feeder = asyncio.run(run())
    assert not inspect.iscoroutinefunction(DriftFeeder.add) and calls  # the actor was tried
    assert feeder.stats() == {"buffered": 0, "sent": 0, "dropped": 1000}


def test_a_slow_actor_backs_up_a_bounded_buffer() -> None:
    async def run() -> DriftFeeder:
        feeder = DriftFeeder(
            Sink(delay_s=10),
            DriftSection(batch_rows=100, flush_interval_s=0.01, max_buffer_rows=500),
            send_timeout_s=0.3,
        )  # fmt: skip
        for i in range(30):
            feeder.add(*batch_of(50, seed=i))
            await asyncio.sleep(0.001)
        assert feeder.rows <= 500  # never more than max_buffer_rows held
        await feeder.flush()
        return feeder

    feeder = asyncio.run(run())
    s = feeder.stats()
    assert s["sent"] == 0 and s["dropped"] == 1500 and s["buffered"] == 0


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    df = datagen.generate(20000, seed=1)
    profile = profile_of_frame(df, NUMERIC, CATEGORICAL, scores=np.full(len(df), 0.3))
    (d / "reference_profile.json").write_text(json.dumps(profile))
    evaluation = {"task": "binary", "primary_metric": "auc", "metrics": {"auc": 0.80}}
    (d / "evaluation.json").write_text(json.dumps(evaluation))
    return d


def actor(
    bundle: Path, tmp_path: Path, retrain: Any = None, generations: Any = None, **sections: Any
) -> DriftActor:
    """The drift actor of variant `control` (version 3) with config `sections` (performance,
    review) beside a small drift window."""
    config = ServingConfig.model_validate(
        {"model": "churn", "variants": [{"name": "control", "version": 3, "weight": 100}],
         "drift": {"window_rows": 2000, "checkpoint_s": 0.1}, **sections}
    )  # fmt: skip
    app = AppSettings(config=config, versions={"control": 3}, state_uri=str(tmp_path / "state"),
                      review_dir=str(tmp_path / "state"),
                      events_path=str(tmp_path / "events.jsonl"))  # fmt: skip
    return DriftActor(
        app,
        "control",
        loader=lambda model, version, uri: contextlib.nullcontext(bundle),
        retrain=retrain,
        generations=generations,
    )


class Coordinator:
    """Stands in for the retrain deployment's handle: records what drift actors tell it."""

    def __init__(self) -> None:
        self.triggers: list[dict[str, Any]] = []
        self.on_drift = self

    async def _call(self, trigger: dict[str, Any]) -> dict[str, Any]:
        self.triggers.append(trigger)
        return {"submitted": True}

    def remote(self, trigger: dict[str, Any]) -> Any:
        return self._call(trigger)


def test_drift_tells_the_retrain_coordinator_what_kind_it_is(bundle: Path, tmp_path: Path) -> None:
    coordinator = Coordinator()
    a = actor(bundle, tmp_path, retrain=coordinator)

    async def run() -> None:
        for scenario, seed in (("covariate_shift", 7), ("unseen_categories", 8)):
            feed_, scores = batch_of(2000, seed, scenario)
            await a.ingest({"feed": feed_, "scores": scores, "type_errors": {}})
        await asyncio.gather(*a._notices)

    asyncio.run(run())
    first, second = coordinator.triggers
    assert first["variant"] == "control" and first["version"] == 3
    assert first["kinds"] == {"features": sorted(datagen.SCENARIOS["covariate_shift"].touched)}
    assert second["kinds"] == {"quality": ["country"]}  # an unseen category is a data bug


def test_labelled_outcomes_raise_performance_drift(bundle: Path, tmp_path: Path) -> None:
    a = actor(bundle, tmp_path, performance={"outcome_is_label": True, "min_outcomes": 200})
    rng = np.random.default_rng(0)

    async def run(n: int, informative: bool) -> None:
        for _ in range(n):
            y = int(rng.random() < 0.3)
            p = (0.6 if y else 0.4) + rng.normal(0, 0.1) if informative else rng.random()
            await a.outcome(float(p), float(y))

    asyncio.run(run(400, informative=True))  # AUC ~0.9, above the 0.80 of the report
    perf = asyncio.run(a.status())["performance"]
    assert perf["judged"] and perf["value"] > 0.8 and not perf["drifted"]
    asyncio.run(run(1000, informative=False))  # the model no longer ranks: AUC ~0.5
    status = asyncio.run(a.status())
    assert status["performance"]["drifted"] and status["drifted"]
    assert status["performance"]["p_value"] < 0.01
    kinds = [e["kind"] for e in EventLog(tmp_path / "events.jsonl").read()]
    assert kinds == ["performance_drift_started"]
    a.save()  # the rolling window survives a restart
    again = actor(bundle, tmp_path, performance={"outcome_is_label": True})
    assert asyncio.run(again.status())["performance"]["drifted"]


def test_uncertain_predictions_are_sampled_into_the_review_queue(
    bundle: Path, tmp_path: Path
) -> None:
    a = actor(bundle, tmp_path, review={"band": 0.05, "sample_rate": 1.0, "max_rows": 300})
    feed_, _ = batch_of(1000, 9)
    scores = np.linspace(0.0, 1.0, 1000)  # 100 of them within 0.05 of 0.5
    asyncio.run(a.ingest({"feed": feed_, "scores": scores, "type_errors": {}}))
    assert not (tmp_path / "state" / "review" / "v3.csv").exists()  # written with checkpoints
    asyncio.run(a.checkpoint())
    queue = pd.read_csv(tmp_path / "state" / "review" / "v3.csv")
    assert len(queue) == 100 and (abs(queue["score"] - 0.5) <= 0.05).all()
    assert set(queue.columns) >= {"review_id", "variant", "model_version", "label", *NUMERIC}
    assert queue["label"].isna().all()
    for _ in range(5):  # the queue stops at max_rows unlabelled rows
        asyncio.run(a.ingest({"feed": feed_, "scores": scores, "type_errors": {}}))
    asyncio.run(a.checkpoint())
    assert len(pd.read_csv(tmp_path / "state" / "review" / "v3.csv")) == 300


def test_actor_restart_resumes_from_its_saved_state(bundle: Path, tmp_path: Path) -> None:
    async def feed(a: DriftActor, n: int, seed: int, scenario: str = "none") -> None:
        feed_, scores = batch_of(n, seed, scenario)
        await a.ingest({"feed": feed_, "scores": scores, "type_errors": {}})

    first = actor(bundle, tmp_path)
    asyncio.run(feed(first, 2000, 1))  # closes window 1 (saved at once)
    asyncio.run(feed(first, 700, 2))  # open window: saved by the periodic checkpoint
    first.save()
    before = asyncio.run(first.status())

    second = actor(bundle, tmp_path)  # what Serve does after the replica died
    after = asyncio.run(second.status())
    assert second.restored_from == {"rows": 2700, "windows": 1}
    assert after["rows"] == before["rows"] == 2700 and after["open_window_rows"] == 700
    assert after["features"] == before["features"]
    asyncio.run(feed(second, 1300, 3, "category_mix"))  # the open window fills up and closes
    assert second.monitor.windows == 2 and second.monitor.last["rows"] == 2000  # type: ignore[index]


def test_actor_raises_drift_events(bundle: Path, tmp_path: Path) -> None:
    a = actor(bundle, tmp_path)
    feed_, scores = batch_of(2000, 5, "unseen_categories")
    asyncio.run(a.ingest({"feed": feed_, "scores": scores, "type_errors": {}}))
    events = EventLog(tmp_path / "events.jsonl").read()
    assert [e["kind"] for e in events] == ["drift_started"]
    assert events[0]["features"] == ["country"] and events[0]["variant"] == "control"
    status = asyncio.run(a.status())
    assert status["drifted"] and status["features"]["country"]["since"] is not None
    assert status["features"]["country"]["quality_flags"] == ["unseen_categories"]


def test_unreadable_state_is_set_aside_not_fatal(bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "state" / "drift" / "control-v3.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    a = actor(bundle, tmp_path)
    assert a.restored_from is None and a.monitor.total_rows == 0
    assert (path.parent / "control-v3.unreadable.json").exists()


def test_rows_an_actor_took_and_died_with_are_counted_as_lost(bundle: Path, tmp_path: Path) -> None:
    """The replica delivered 2,700 rows; the actor saved 2,000 (a closed window) and died. The
    actor Serve starts in its place learns from the replica's next batch that 700 are gone:
    `rows_lost`, kept across later restarts, never silent."""

    async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
        current = [actor(bundle, tmp_path)]

        async def send(batch: dict[str, Any]) -> None:
            await current[0].ingest(batch)

        feeder = DriftFeeder(send, DriftSection(batch_rows=10**6, flush_interval_s=60))
        for n, seed in ((2000, 1), (700, 2)):
            feeder.add(*batch_of(n, seed))
            await feeder.flush()
        current[0] = actor(bundle, tmp_path)  # the first died with 700 rows unsaved
        feeder.add(*batch_of(300, 3))
        await feeder.flush()
        restarted = await current[0].status()
        current[0].save()
        again = await actor(bundle, tmp_path).status()
        return restarted, again, feeder.stats()

    restarted, again, sent = asyncio.run(run())
    assert sent == {"buffered": 0, "sent": 3000, "dropped": 0}
    assert restarted["rows_lost"] == 700 and restarted["rows"] == 2000 + 300
    assert again["rows_lost"] == 700 and again["rows"] == 2300  # kept in the saved state


def test_a_batch_that_arrived_after_its_send_timed_out_is_not_counted_lost(
    bundle: Path, tmp_path: Path
) -> None:
    """The replica counted its first batch as dropped (the send timed out) though the actor
    took it: its later totals are below what the actor holds, which is no loss."""
    a = actor(bundle, tmp_path)

    async def send(rows: int, seed: int, sent_total: int, dropped_total: int) -> None:
        feed, scores = batch_of(rows, seed)
        await a.ingest({"feed": feed, "scores": scores, "type_errors": {}, "rows": rows,
                        "source": "replica-1", "sent_total": sent_total,
                        "dropped_total": dropped_total})  # fmt: skip

    async def run() -> dict[str, Any]:
        await send(100, 1, sent_total=0, dropped_total=0)  # arrived; the replica timed out
        await send(50, 2, sent_total=0, dropped_total=100)
        await send(50, 3, sent_total=50, dropped_total=100)
        return await a.status()

    status = asyncio.run(run())
    assert status["rows_lost"] == 0 and status["rows"] == 200 and status["dropped_rows"] == 100


class Kept:
    """Ray's GCS key-value store as the actors use it: the newest save number per state file."""

    def __init__(self, table: dict[str, int], key: str) -> None:
        self.table, self.key = table, key

    def known(self) -> int:
        return self.table.get(self.key, 0)

    def record(self, seq: int) -> None:
        self.table[self.key] = seq


def test_two_drift_replicas_cannot_overwrite_each_other_and_older_state_is_refused(
    bundle: Path, tmp_path: Path
) -> None:
    """A second replica (a rolling update) resumes the state and saves; the first, saving
    after it, is fenced: it writes nothing more and fails its health check. A state file older
    than the newest save the cluster knows (a node-local state_uri read on another node) is
    refused rather than resumed."""
    from shipyard.errors import Fenced, StaleState

    table: dict[str, int] = {}
    gens = lambda key: Kept(table, key)  # noqa: E731
    first = actor(bundle, tmp_path, generations=gens)
    feed_, scores = batch_of(2000, 1, "none")
    asyncio.run(first.ingest({"feed": feed_, "scores": scores, "type_errors": {}}))
    assert first.generation >= 1 and table and first.generation == next(iter(table.values()))
    path = tmp_path / "state" / "drift" / first.state_name
    older = path.read_text()
    second = actor(bundle, tmp_path, generations=gens)
    assert second.restored_from == {"rows": 2000, "windows": 1}
    second.save()
    first.save()
    assert first.fenced and json.loads(path.read_text())["generation"] == second.generation
    with pytest.raises(Fenced):
        first.check_health()
    second.check_health()  # the newer one goes on
    path.write_text(older)  # an older copy of the state, as another node's disk would hold
    with pytest.raises(StaleState, match="older state"):
        actor(bundle, tmp_path, generations=gens)
