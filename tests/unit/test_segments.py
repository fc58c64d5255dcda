"""The router's record segments (`shipyard.ab.segments`): an answered request's A/B record is
written before its answer, by group commit; a router that dies loses none, because the store
takes the segments it left (each request id once); storage refusing a write holds no answer back
and is counted."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shipyard.ab.segments import FOLDER, SegmentLog, collect
from shipyard.errors import StorageError
from shipyard.storage import StateDir
from tests.unit import test_edge
from tests.unit.test_edge import App, Away, _outside_serve
from tests.unit.test_router import Handle

bundle, row = test_edge.bundle, test_edge.row  # the edge tests' fixtures


def _segment_rows(state: Path) -> list[dict[str, Any]]:
    return [r for p in sorted((state / FOLDER).rglob("*.json"))
            for r in json.loads(p.read_text())["rows"]]  # fmt: skip


def test_many_answers_wait_for_few_writes_and_every_record_is_written(tmp_path: Path) -> None:
    log = SegmentLog(StateDir(tmp_path))

    async def request(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 7))
        log.add({"id": f"r{i}", "variant": "control"})
        await log.saved()
        assert f"r{i}" in {r["id"] for r in _segment_rows(tmp_path)}  # written before "answer"

    async def scenario() -> None:
        await asyncio.gather(*(request(i) for i in range(200)))

    asyncio.run(scenario())
    rows = _segment_rows(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(200))
    stats = log.stats()
    assert stats["rows_written"] == 200 and stats["unsaved"] == 0
    assert stats["segments_written"] < 200 / 2, stats  # group commit: a write serves many


def test_delivered_segments_are_deleted_and_rows_taken_before_their_write_are_not_written(
    tmp_path: Path,
) -> None:
    log = SegmentLog(StateDir(tmp_path))

    async def scenario() -> None:
        for i in range(10):
            log.add({"id": f"a{i}"})
        await log.saved()
        log.delete(log.delivered([{"id": f"a{i}"} for i in range(10)]))
        log.add({"id": "b0"})
        log.delivered([{"id": "b0"}])  # the store took it before its segment was written
        await log.saved()

        log.add({"id": "c0"})
        writing = asyncio.ensure_future(log.saved())
        while log.pending:  # until the write holding it is on its way
            await asyncio.sleep(0)
        log.delivered([{"id": "c0"}])  # taken by the store meanwhile
        await writing
        log.delete(log.delivered([]))  # that segment is deleted with the next delivery

    asyncio.run(scenario())
    assert _segment_rows(tmp_path) == [] and log.stats()["segments_live"] == 0
    assert log.stats()["rows_written"] == 11


def test_a_refused_write_holds_no_answer_back_and_is_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentLog(StateDir(tmp_path))
    real = log.folder.write

    def refuse(rel: str, data: str | bytes) -> None:
        raise StorageError("storage away")

    async def scenario() -> None:
        monkeypatch.setattr(log.folder, "write", refuse)
        for i in range(5):
            log.add({"id": f"r{i}"})
        await asyncio.wait_for(log.saved(), 5)  # answered although nothing was written
        assert log.stats()["unsaved"] == 5 and log.stats()["write_failures"] == 1
        monkeypatch.setattr(log.folder, "write", real)
        await log.retry()

    asyncio.run(scenario())
    assert log.stats()["unsaved"] == 0
    assert sorted(r["id"] for r in _segment_rows(tmp_path)) == [f"r{i}" for i in range(5)]


def test_a_router_that_dies_loses_no_answered_request(
    tmp_path: Path, bundle: Path, row: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 requests answered while the store cannot take them; the router then dies with all 40
    in memory. A new store takes them from the router's segments: 40 requests, each counted
    once, also when a segment is read again (a store that died between taking and deleting)."""
    from serving.store import ExperimentStore

    _outside_serve(monkeypatch)
    app = App(tmp_path, bundle, limits={"probe_timeout_s": 0.2, "timeout_s": 0.5})
    with app.client() as client:
        app.router.store.handle = Handle(Away(app.store))
        answered = [
            client.post("/predict", json={"instance": row, "key": f"k{i}"}) for i in range(40)
        ]
        assert all(r.status_code == 200 for r in answered)
        assert len(app.router.records.rows) == 40  # not delivered: the router dies with them
        app.router.records.rows = []
    state = tmp_path / "state"
    kept = sorted((state / FOLDER).rglob("*.json"))
    assert {r["id"] for r in _segment_rows(state)} == {r.json()["request_id"] for r in answered}
    spare = tmp_path / "spare"
    shutil.copytree(state / FOLDER, spare)

    store = ExperimentStore(app.settings, aliases=app.aliases)
    found = collect(StateDir(str(state)), store.experiment.recover, grace_s=0)
    assert found == {"segments": len(kept), "rows": 40} and not list(
        (state / FOLDER).rglob("*.json")
    )
    shutil.copytree(spare, state / FOLDER, dirs_exist_ok=True)  # read again: nothing new
    assert collect(StateDir(str(state)), store.experiment.recover, grace_s=0)["rows"] == 0
    report = store.experiment.report()
    assert sum(v["requests"] for v in report["variants"].values()) == 40
    assert report["store"]["recovered_rows"] == 40


def test_a_young_segment_is_left_to_its_router(tmp_path: Path) -> None:
    log = SegmentLog(StateDir(tmp_path))
    log.add({"id": "r0", "t": "req"})
    asyncio.run(log.saved())
    taken: list[Any] = []

    def ingest(rows: list[Any]) -> int:
        taken.extend(rows)
        return len(rows)

    found = collect(StateDir(tmp_path), ingest, grace_s=60)
    assert found == {"segments": 0, "rows": 0} and taken == []
    assert len(_segment_rows(tmp_path)) == 1
