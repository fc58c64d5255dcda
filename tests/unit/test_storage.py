"""Serving state by URI, on a local disk and on an S3 server of the tests' own (moto): atomic
files, the journal, and the experiment store's exactly-once recovery after crashes at any write,
compared with a store that never crashed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from shipyard.ab.experiment import Experiment
from shipyard.config.serving import TrafficUpdate, parse_serving_config
from shipyard.errors import ConfigError, Conflict, Fenced, StaleState, StorageError
from shipyard.events import EventLog
from shipyard.storage import Journal, StateDir


@pytest.fixture(params=["local", "s3"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "state")
    return str(request.getfixturevalue("s3_uri"))


# --- the folder --------------------------------------------------------------------------------
def test_files_are_replaced_whole_and_listed(uri: str) -> None:
    d = StateDir(uri)
    assert d.read("a.json") is None and d.files() == []
    d.write("a.json", '{"v": 1}')
    d.write("a.json", b'{"v": 2}')
    d.child("sub").write("b.json", "x")
    assert json.loads(d.read("a.json") or b"") == {"v": 2}
    assert d.files() == ["a.json"] and d.child("sub").files() == ["b.json"]
    d.write_table("t/part-0.parquet", pa.table({"x": [1.5, None], "s": ["a", "b"]}))
    frame = pd.read_parquet(d.path("t"), filesystem=d.fs)
    assert frame["s"].tolist() == ["a", "b"]
    d.delete(["a.json", "missing.json"])
    assert d.read("a.json") is None
    local = d.local_path()
    if local is not None:  # no temporary file is left beside what was written
        assert sorted(p.name for p in local.rglob("*") if p.is_file()) == [
            "b.json",
            "part-0.parquet",
        ]


@pytest.mark.parametrize("bad", ["nosuch://bucket/x", "s3://"])
def test_an_unopenable_uri_names_state_uri(bad: str) -> None:
    with pytest.raises(ConfigError, match="state_uri"):
        StateDir(bad)


def test_an_unreachable_object_store_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shipyard.compute.localray import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    d = StateDir("s3://nobucket/state")
    with pytest.raises(StorageError, match="could not write"):
        d.write("a.json", "{}")


# --- the journal -------------------------------------------------------------------------------
def test_journal_compacts_covered_entries_and_keeps_what_the_index_needs(uri: str) -> None:
    d = StateDir(uri).child("journal")
    j = Journal(d)
    for i in range(20):
        j.append({"kind": "ingest", "rows": [{"id": i}]})
    j.compact()
    for i in range(20, 30):
        j.append({"kind": "ingest", "rows": [{"id": i}]})
    assert j.pending == 10 and len(d.files()) == 1 and len(d.folders()) == 1
    again = Journal(d)
    assert [e["rows"][0]["id"] for e in again.load()] == list(range(30)) and again.seq == 30
    for i in range(30, 120):
        again.append({"kind": "ingest", "rows": [{"id": i}]})
        if i % 10 == 9:
            again.compact()
            again.trim(keep=25)
    assert len(d.files()) <= 4 and d.folders() == []  # bounded: what holds 25 entries, no more
    kept = [e["rows"][0]["id"] for e in Journal(d).load()]
    assert kept == list(range(kept[0], 120)) and 25 <= len(kept) <= 40


def test_a_crash_between_segment_and_delete_reads_each_entry_once(tmp_path: Path) -> None:
    d = StateDir(tmp_path / "j")
    j = Journal(d)
    for i in range(5):
        j.append({"n": i})
    d.write("000000000001-000000000005.jsonl",
            "".join(json.dumps({"seq": i + 1, "n": i}) + "\n" for i in range(5)))  # fmt: skip
    again = Journal(d)
    assert [e["n"] for e in again.load()] == [0, 1, 2, 3, 4]
    assert d.files() == ["000000000001-000000000005.jsonl"] and d.folders() == []  # tidied
    again.append({"n": 5})
    assert [e["n"] for e in Journal(d).load()] == [0, 1, 2, 3, 4, 5]


def test_two_writers_of_one_journal_never_overwrite_each_other(uri: str) -> None:
    """Two store replicas alive at once (a rolling update, a partitioned node): of two journals
    appending to one folder, exactly one gets each entry number; the other is fenced (Fenced,
    then every append refused); every acknowledged entry is on storage as its writer wrote it,
    and a stale writer's compaction deletes only what it merged."""
    d = StateDir(uri).child("journal")
    old = Journal(d)
    old.load()
    for i in range(5):
        old.append({"by": "old", "i": i})
    new = Journal(d)  # a second replica, started while the first still runs
    new.load()
    assert [new.append({"by": "new", "i": i}) for i in range(2)] == [6, 7]
    with pytest.raises(Fenced, match="entry 6 was written by another writer"):
        old.append({"by": "old", "i": 5})
    with pytest.raises(Fenced):  # stopped, not trying the next number
        old.append({"by": "old", "i": 6})
    old.compact()  # its five entries: into a segment, their files deleted, the new one's kept
    assert [(e["seq"], e["by"]) for e in Journal(d).load()] == [
        *((s, "old") for s in range(1, 6)), (6, "new"), (7, "new"),
    ]  # fmt: skip

    # At once, from the same point: each number goes to one writer, the loser stops. On the
    # local disk only: moto's S3 server checks If-None-Match and then puts, two steps where S3
    # makes one, so two requests at the same instant may both pass there (S3's refusal of a
    # second put is checked above, on both).
    if not d.local:
        return
    first, second = Journal(d), Journal(d)
    first.load(), second.load()
    acked: dict[str, list[int]] = {"first": [], "second": []}
    fenced: list[str] = []
    start = threading.Barrier(2)

    def run(name: str, journal: Journal) -> None:
        start.wait()
        for i in range(20):
            try:
                acked[name].append(journal.append({"by": name, "i": i}))
            except Fenced:
                fenced.append(name)
                return

    threads = [threading.Thread(target=run, args=a) for a in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fenced) == 1 and len(acked["second" if fenced == ["first"] else "first"]) == 20
    stored = {e["seq"]: e["by"] for e in Journal(d).load()}
    assert sorted(stored) == list(range(1, len(stored) + 1))  # no gap, no entry twice
    assert all(stored[seq] == name for name, seqs in acked.items() for seq in seqs)


# --- the experiment store ------------------------------------------------------------------------
class Crash(BaseException):
    """The process dies at a write: what was written before it is on storage, nothing after."""


class Plan:
    def __init__(self) -> None:
        self.crash_in: int | None = None  # crash at the n-th write from now
        self.refuse = False  # storage refuses writes (StorageError)
        self.writes = 0

    def tick(self) -> None:
        self.writes += 1
        if self.refuse:
            raise StorageError("storage refused (test)")
        if self.crash_in is not None:
            self.crash_in -= 1
            if self.crash_in <= 0:
                self.crash_in = None
                raise Crash()


class FaultyDir(StateDir):
    """A StateDir whose writes follow a Plan (children share it)."""

    def __init__(self, inner: StateDir, plan: Plan) -> None:
        super().__init__(inner.uri, _fs=inner.fs)
        self.root, self.plan = inner.root, plan

    def child(self, rel: str) -> StateDir:
        return FaultyDir(super().child(rel), self.plan)

    def write(self, rel: str, data: str | bytes) -> None:
        self.plan.tick()
        super().write(rel, data)

    def create(self, rel: str, data: str | bytes) -> bool:
        self.plan.tick()
        return super().create(rel, data)

    def write_table(self, rel: str, table: pa.Table) -> None:
        self.plan.tick()
        super().write_table(rel, table)

    def delete(self, rels: Iterable[str]) -> None:
        self.plan.tick()
        super().delete(rels)


VARIANTS = [
    {"name": "control", "version": 1, "weight": 80},
    {"name": "treatment", "version": 2, "weight": 20},
    {"name": "shadowed", "version": 3, "shadow": 30},
]
VERSIONS = {"control": 1, "treatment": 2, "shadowed": 3}


def cfg() -> Any:
    # Guardrails off: their epoch counters restart with the process by design.
    return parse_serving_config({"model": "m", "variants": VARIANTS, "ab": {"min_outcomes": 5},
                                 "guardrails": {"enabled": False}})  # fmt: skip


def durable(state: StateDir | None, **kw: Any) -> Experiment:
    return Experiment(cfg(), VERSIONS, state=state, clock=lambda: 1000.0, compact_entries=7, **kw)


def counters(e: Experiment) -> dict[str, Any]:
    """Everything a restart must bring back exactly."""
    return {
        "snapshot": e.snapshot(),
        "stats": {n: s.to_json() for n, s in e.stats.items()},
        "shadow": {n: (s.mirrored, s.errors, s.agree) for n, s in e.shadows.items()},
        "pending": dict(e.joins.pending),
        "joined": {k: v.get("outcome") for k, v in e.joins.index.items()},
        "msprt": e.msprt,
    }


def operations(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    """Request batches (some re-sent), feedback early and late, and traffic changes."""
    ops: list[tuple[str, Any]] = []
    served: list[str] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.45:
            rows = []
            for j in range(rng.randint(1, 6)):
                rid = f"r{i}-{j}"
                variant = rng.choice(["control", "treatment"])
                rows.append({"t": "req", "id": rid, "variant": variant,
                             "version": VERSIONS[variant], "key": f"k{rng.randint(0, 30)}",
                             "status": rng.choice([200] * 8 + [503, 422]), "pred": rng.random(),
                             "latency_ms": 3.0, "ab": True})  # fmt: skip
                served.append(rid)
            if rng.random() < 0.3:
                rows.append({"t": "shadow", "id": f"s{i}", "variant": "shadowed", "ok": True,
                             "agree": True, "latency_ms": 4.0})  # fmt: skip
            ops.append(("ingest", rows))
            if rng.random() < 0.2:
                ops.append(("ingest", rows))  # a flush whose answer was lost, sent again
        elif roll < 0.85 and served:
            rid = rng.choice(served)
            ops.append(("feedback", (rid, float(rng.random() < 0.3))))
        elif roll < 0.92:
            ops.append(("feedback", (f"early-{i}", 1.0)))  # its request never arrives
        else:
            w = rng.choice([5.0, 20.0, 50.0])
            ops.append(("traffic", {"weights": {"treatment": w, "control": 100 - w}}))
    return ops


def apply(e: Experiment, op: tuple[str, Any]) -> None:
    kind, arg = op
    if kind == "ingest":
        e.ingest(arg)
    elif kind == "feedback":
        # Conflict: given twice by the client, or it was durable before a crash.
        with contextlib.suppress(Conflict):
            e.feedback(*arg)
    else:
        e.set_traffic(TrafficUpdate.model_validate(arg), source="test")


@pytest.mark.parametrize(("backend", "n_ops", "seed"), [("local", 400, 0), ("local", 400, 1),
                                                        ("s3", 120, 2)])  # fmt: skip
def test_crashes_at_random_writes_count_every_acknowledged_call_exactly_once(
    backend: str, n_ops: int, seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A client that got no answer (the process died at a write) sends the call again to the
    restarted store, as routers and feedback clients do. After every crash, the restored store
    and, at the end, its counters, split and joins equal those of a store that never crashed."""
    rng = random.Random(seed)
    root = StateDir(tmp_path / "s" if backend == "local" else request.getfixturevalue("s3_uri"))
    plan = Plan()
    live = durable(FaultyDir(root, plan))
    reference = durable(None)
    crashes = 0
    for op in operations(rng, n_ops):
        if rng.random() < 0.08:
            plan.crash_in = rng.randint(1, 3)
        while True:
            try:
                apply(live, op)
                break
            except Crash:
                crashes += 1
                live = durable(FaultyDir(root, plan))  # a new replica, from storage alone
        apply(reference, op)
    restarted = durable(root)
    assert crashes >= 5
    assert counters(restarted) == counters(reference)
    assert counters(live) == counters(reference)
    restored = restarted.durable.restored if restarted.durable else None
    assert restored is not None and restored["entries"] > 0


def test_a_refused_write_changes_nothing_and_its_retry_is_accepted(tmp_path: Path) -> None:
    plan = Plan()
    events = EventLog(tmp_path / "events.jsonl")
    e = durable(FaultyDir(StateDir(tmp_path / "s"), plan), events=events)
    e.ingest([{"t": "req", "id": "a", "variant": "control", "version": 1, "pred": 0.2}])
    before = counters(e)
    plan.refuse = True
    with pytest.raises(StorageError):
        e.feedback("a", 1.0)
    with pytest.raises(StorageError):
        e.ingest([{"t": "req", "id": "b", "variant": "control", "version": 1, "pred": 0.2}])
    with pytest.raises(StorageError):  # its snapshot could not be written: the change is undone
        e.set_traffic(TrafficUpdate(weights={"treatment": 50}), source="test")
    assert counters(e) == before and events.read() == []
    plan.refuse = False
    assert e.feedback("a", 1.0)["joined"]  # not a 409: nothing of the refused call was kept
    e.set_traffic(TrafficUpdate(weights={"treatment": 50}), source="test")
    assert [ev["kind"] for ev in events.read()] == ["traffic_changed"]
    assert counters(durable(StateDir(tmp_path / "s"))) == counters(e)


def test_a_new_set_of_variants_starts_afresh_and_leaves_the_old_state(tmp_path: Path) -> None:
    root = StateDir(tmp_path / "s")
    first = durable(root)
    first.ingest([{"t": "req", "id": "a", "variant": "control", "version": 1, "pred": 0.2}])
    other = Experiment(cfg(), {**VERSIONS, "treatment": 7}, state=root)
    assert other.stats["control"].requests == 0
    assert durable(root).stats["control"].requests == 1


def test_older_state_than_the_cluster_knows_is_refused(tmp_path: Path) -> None:
    """A node-local state_uri read on another node finds older state than the app wrote."""
    from serving.settings import AppSettings
    from serving.store import ExperimentStore

    class Known:
        def __init__(self, uri: str) -> None:
            self.seq = 0

        def known(self) -> int:
            return self.seq

        def record(self, seq: int) -> None:
            self.seq = seq

    class Ahead(Known):
        def known(self) -> int:
            return 40

    app = AppSettings(config=cfg(), versions=VERSIONS, state_uri=str(tmp_path / "s"),
                      review_dir=str(tmp_path / "r"), events_path=str(tmp_path / "ev.jsonl"))  # fmt: skip
    store = ExperimentStore(app, aliases=object(), generations=Known)  # type: ignore[arg-type]
    asyncio.run(store.ingest([{"t": "req", "id": "a", "variant": "control", "version": 1}]))
    with pytest.raises(StaleState, match="older state"):
        ExperimentStore(app, aliases=object(), generations=Ahead)  # type: ignore[arg-type]


def test_a_store_replica_another_one_took_over_from_stops_and_fails_its_health_check(
    uri: str,
) -> None:
    """A rolling update (or a partition) leaves two store replicas alive on one state_uri: the
    one that falls behind refuses what it can no longer journal, traffic changes included (a 503
    the router retries against the other), and fails Serve's health check, so Serve replaces it;
    nothing either of them acknowledged is lost or counted twice."""
    from serving.settings import AppSettings
    from serving.store import ExperimentStore

    app = AppSettings(config=cfg(), versions=VERSIONS, state_uri=uri, review_dir=uri,
                      events_path=f"{uri}/events")  # fmt: skip

    def store() -> ExperimentStore:
        return ExperimentStore(app, aliases=object(), generations=None)  # type: ignore[arg-type]

    def req(i: int) -> list[dict[str, Any]]:
        return [{"t": "req", "id": f"r{i}", "variant": "control", "version": 1, "status": 200}]

    old = store()
    asyncio.run(old.ingest(req(1)))
    new = store()  # the replica Serve started beside it
    asyncio.run(new.ingest(req(2)))
    before = dict(old.experiment.weights)
    with pytest.raises(Fenced):  # a change takes a journal number before its snapshot
        asyncio.run(old.set_traffic({"weights": {"treatment": 50}}, "PUT /variants"))
    assert old.experiment.weights == before  # undone, and no snapshot over the new one's
    with pytest.raises(Fenced):
        asyncio.run(old.ingest(req(3)))
    with pytest.raises(Fenced, match="another store replica"):
        old.check_health()
    new.check_health()
    asyncio.run(new.ingest(req(3)))  # the router's retry, answered by the replica that holds it
    assert new.experiment.stats["control"].requests == 3
    assert store().experiment.stats["control"].requests == 3  # and so does the next one
    assert store().experiment.weights == before


def test_the_event_log_is_an_object_per_event_on_an_object_store(uri: str) -> None:
    where = f"{uri}/events" if "://" in uri else f"{uri}/events.jsonl"
    log = EventLog(where)
    for i in range(3):
        log.emit("traffic_changed", n=i)
    assert [e["n"] for e in EventLog(where).read()] == [0, 1, 2]
    if "://" in uri:
        assert len(StateDir(where).files()) == 3 and log.log_failed == 0
