"""Request capture without Ray: rows back with every raw feature, files by rows and by time,
sampling by request id, bounded while storage is away, and the router capturing every outcome."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.router import Router
from serving.settings import AppSettings
from serving.store import ExperimentStore
from shipyard.config.serving import CaptureSection, ServingConfig
from shipyard.monitoring.capture import Capture, sampled
from shipyard.storage import StateDir
from tests.unit.test_edge import bundle, row  # noqa: F401  (fixtures: a real ONNX version)
from tests.unit.test_router import Aliases, Handle, Model
from tests.unit.test_storage import FaultyDir, Plan

KINDS = {"age": "numeric", "plan": "categorical", "income": "numeric"}


def capture(state: StateDir, **settings: Any) -> Capture:
    c = Capture(state, "churn", CaptureSection(**settings))
    c.set_features(KINDS)
    return c


def read(state: StateDir, kind: str = "requests") -> pd.DataFrame:
    """As a user would, with pandas over the Hive partitions (no Shipyard code)."""
    return pd.read_parquet(state.path(kind), filesystem=state.fs)


def test_every_request_reads_back_with_every_raw_feature(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "capture")
    c = capture(state)
    for i in range(50):
        c.add_request(f"r{i}", "control", 3, [{"age": i, "plan": "gold", "income": None}], 200,
                      2.5, key_hash="k", out={"predictions": [1], "probabilities": [0.75],
                                              "score": [0.75]})  # fmt: skip
    c.add_request("bad", "control", 3, [{"age": "old", "plan": 7}], 422, 1.0)
    c.add_request("huge", "control", 3, [{"age": 10**401, "plan": None}], 422, 1.0)
    c.add_request("r0", "mirror", 4, [{"age": 0, "plan": "gold"}], 200, 9.0, shadow=True,
                  out={"predictions": [0], "probabilities": [0.25], "score": [0.25]})  # fmt: skip
    c.add_feedback("r0", 1.0, True, "control")
    assert c.flush() == 54 and c.dropped == 0
    rows = read(state)
    assert len(rows) == 53 and set(KINDS) <= set(rows.columns)
    assert pd.isna(rows[rows.served_request_id == "huge"]["age"]).all()  # beyond float64: null
    assert rows["age"].dtype == "float64" and rows["income"].isna().sum() >= 50
    ok = rows[(rows.served_status == 200) & ~rows.served_shadow]
    assert sorted(ok["age"]) == [float(i) for i in range(50)] and set(ok["plan"]) == {"gold"}
    assert list(ok["served_probabilities"].iloc[0]) == [0.25, 0.75]
    bad = rows[rows.served_status == 422].iloc[0]  # as received: a number kept as category text
    assert pd.isna(bad["age"]) and bad["plan"] == "7"
    shadow = rows[rows.served_shadow].iloc[0]
    assert shadow["served_variant"] == "mirror" and shadow["served_request_id"] == "r0"
    assert set(rows["served_model"]) == {"churn"}
    fb = read(state, "feedback")
    assert fb.to_dict("records")[0]["served_outcome"] == 1.0


def test_fields_beyond_the_features_are_kept_as_text_to_join_on(tmp_path: Path) -> None:
    """A customer id, the target, a timestamp: whatever else the client sent comes back as text
    (JSON for what is not a string), so captured rows join to a team's own tables."""
    state = StateDir(tmp_path / "capture")
    c = capture(state)
    sent = [{"age": 30, "plan": "gold", "income": 1.5, "customer_id": 1042, "churned": 1,
             "ts": "2026-12-01T10:00:00", "tags": {"ab": [1, 2]}, "flag": True},
            {"age": 31, "plan": "free", "income": None, "customer_id": "C-7", "ts": None,
             "served_status": "a client's own field"}]  # fmt: skip
    c.add_request("r1", "control", 3, sent, 200, 2.0, out={"predictions": [1, 0]})
    assert c.flush() == 2
    rows = read(state).sort_values("served_record")
    assert rows["customer_id"].tolist() == ["1042", "C-7"] and rows["churned"].iloc[0] == "1"
    assert rows["ts"].iloc[0] == "2026-12-01T10:00:00" and pd.isna(rows["ts"].iloc[1])
    assert json.loads(rows["tags"].iloc[0]) == {"ab": [1, 2]} and rows["flag"].iloc[0] == "true"
    assert pd.isna(rows["churned"].iloc[1])  # not sent with that record
    assert rows["served_status"].tolist() == [200, 200]  # Shipyard's own, not the client's
    assert rows["age"].tolist() == [30.0, 31.0]  # the features as before, typed


def wait_written(c: Capture, rows: int) -> None:
    deadline = time.monotonic() + 10
    while c.rows_written < rows and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize(("settings", "n"), [({"file_rows": 10, "file_s": 3600}, 12),
                                             ({"file_rows": 10**6, "file_s": 0.2}, 3)],
                         ids=["by rows", "by time"])  # fmt: skip
def test_a_file_is_written_by_rows_or_by_time(
    tmp_path: Path, settings: dict[str, Any], n: int
) -> None:
    state = StateDir(tmp_path / "capture")
    c = capture(state, **settings)
    c.start()
    for i in range(n):
        c.add_request(f"r{i}", "control", 1, [{"age": i}], 200, 1.0)
    wait_written(c, n)  # long before the other bound
    assert c.rows_written == n and c.files == 1
    c.add_request("last", "control", 1, [{"age": 1}], 200, 1.0)
    c.close()  # what is left is written when the writer stops
    assert len(read(state)) == n + 1 and c.files == 2


def test_sampling_is_by_request_id_and_keeps_its_feedback(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "capture")
    c = capture(state, sample_rate=0.3)
    ids = [f"id-{i}" for i in range(2000)]
    for rid in ids:
        c.add_request(rid, "control", 1, [{"age": 1}], 200, 1.0)
        c.add_feedback(rid, 0.0, True, "control")
    c.flush()
    kept = set(read(state)["served_request_id"])
    assert 0.3 * 2000 - 3 * 20.5 < len(kept) < 0.3 * 2000 + 3 * 20.5  # 3 sd of Binomial(2000, .3)
    assert set(read(state, "feedback")["served_request_id"]) == kept
    assert kept == {rid for rid in ids if sampled(rid, 0.3)}


def test_storage_away_drops_and_counts_beyond_the_bound_and_never_raises(tmp_path: Path) -> None:
    plan = Plan()
    state = FaultyDir(StateDir(tmp_path / "capture"), plan)
    c = capture(state, max_buffered_rows=30)
    plan.refuse = True
    for i in range(20):
        c.add_request(f"a{i}", "control", 1, [{"age": i}], 200, 1.0)
    assert c.flush() == 0 and c.failed_writes == 1
    for i in range(20):
        c.add_request(f"b{i}", "control", 1, [{"age": i}], 200, 1.0)  # 10 fit, 10 dropped
    assert c.dropped == 10 and c.stats()["buffered"] == 30
    plan.refuse = False
    assert c.flush() == 30
    assert sorted(read(state)["served_request_id"])[:3] == ["a0", "a1", "a10"]


def test_the_router_captures_every_outcome_shadow_and_feedback(tmp_path: Path) -> None:
    class Kinds(Model):
        def info(self) -> dict[str, Any]:
            return {"loaded_at": 1.0, "feature_kinds": {"x": "numeric"}}

    cfg = ServingConfig.model_validate(
        {"model": "m", "variants": [{"name": "control", "version": 1, "weight": 100},
                                    {"name": "mirror", "version": 2, "shadow": 100}]}
    )  # fmt: skip
    app = AppSettings(config=cfg, versions={"control": 1, "mirror": 2},
                      state_uri=str(tmp_path / "s"), review_dir=str(tmp_path),
                      events_path=str(tmp_path / "ev.jsonl"))  # fmt: skip
    store = ExperimentStore(app, aliases=Aliases())
    router = Router(app, {n: Handle(Kinds(n)) for n in app.versions}, Handle(store))
    with TestClient(router.build_app()) as client:
        asyncio.run(router.reconfigure(cfg.traffic()))
        asyncio.run(router.check_health())
        for task in router._tasks:
            task.cancel()
        ok = client.post("/predict", json={"instances": [{"x": 3}, {"x": 9}], "key": "u1"})
        bad = client.post("/predict", json={"instance": {"x": "three"}})
        fb = client.post("/feedback", json={"request_id": ok.json()["request_id"], "outcome": 1})
        assert (ok.status_code, bad.status_code, fb.status_code) == (200, 422, 200)
        time.sleep(0.2)  # the shadow calls run on the app's loop
        report = client.get("/ab").json()["router"]["capture"]
    assert report["enabled"] and report["dropped"] == 0
    assert router.capture is not None
    router.capture.flush()
    rows = read(StateDir(tmp_path / "s").child("capture"))
    live = rows[~rows.served_shadow]
    assert sorted(live["served_status"]) == [200, 200, 422]
    answered = live[live.served_status == 200].sort_values("served_record")
    assert answered["x"].tolist() == [3.0, 9.0] and answered["served_score"].tolist() == [0.3, 0.9]
    assert set(answered["served_key_hash"]) != {None}
    assert set(rows[rows.served_shadow]["served_variant"]) == {"mirror"}
    fb_rows = read(StateDir(tmp_path / "s").child("capture"), "feedback")
    assert fb_rows["served_request_id"].tolist() == [ok.json()["request_id"]]


def test_capture_can_be_turned_off(tmp_path: Path) -> None:
    cfg = ServingConfig.model_validate(
        {"model": "m", "capture": {"enabled": False},
         "variants": [{"name": "control", "version": 1, "weight": 100}]}
    )  # fmt: skip
    app = AppSettings(config=cfg, versions={"control": 1}, state_uri=str(tmp_path / "s"),
                      review_dir=str(tmp_path), events_path=str(tmp_path / "ev.jsonl"))  # fmt: skip
    router = Router(app, {"control": Handle(Model("control"))}, Handle(object()))
    assert router.capture is None


def test_real_variants_tell_the_router_their_features_and_capture_writes_them(
    tmp_path: Path,
    bundle: Path,  # noqa: F811  (the fixture imported above)
    row: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same path over real ONNX variants (VariantModel): their feature kinds reach the
    router's capture, so it can type the columns and write."""
    from tests.unit.test_edge import App, _outside_serve

    _outside_serve(monkeypatch)
    app = App(tmp_path, bundle)
    with app.client() as client:
        assert client.portal is not None
        client.portal.call(app.router.check_health)
        for i in range(5):
            assert (
                client.post("/predict", json={"instance": row, "key": f"k{i}"}).status_code == 200
            )
    assert app.router.capture is not None and set(row) <= set(app.router.capture.kinds)
    assert app.router.capture.flush() == 5
    rows = read(StateDir(tmp_path / "state").child("capture"))
    assert len(rows) == 5 and set(row) <= set(rows.columns)
