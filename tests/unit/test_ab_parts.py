"""The experiment's parts on their own: what the ledger counts of a router's record, when a
treatment breaches its guardrails, what a snapshot puts back, what a traffic change may set and how
it is undone, which request an outcome joins, what a promotion does to the registry's aliases, when
snapshots are written (the experiment's own tests drive them end to end)."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shipyard.ab import aliases as registry
from shipyard.ab import durability, traffic
from shipyard.ab.changes import Changes
from shipyard.ab.experiment import Experiment
from shipyard.ab.guardrails import breach
from shipyard.ab.joins import FeedbackJoin
from shipyard.ab.ledger import ShadowStats, VariantStats, index_entry, joinable
from shipyard.config.serving import Guardrails, TrafficUpdate
from shipyard.errors import InvalidInput, StorageError
from shipyard.storage import StateDir
from tests.unit.test_experiment import VERSIONS, FakeAliases, config, requests_for


def counted(*records: dict[str, Any]) -> VariantStats:
    st = VariantStats()
    for r in records:
        st.count(r)
    return st


def test_a_refused_or_input_failed_request_counts_only_as_such() -> None:
    st = counted({"status": 422, "key": "a", "pred": 0.5}, {"status": 503, "blame": "input"})
    assert (st.requests, st.rejected, st.input_failures) == (2, 1, 1)
    assert (st.errors, st.epoch_requests, st.units, st.predictions.n) == (0, 0, 0, 0)


def test_units_are_keys_and_latency_only_one_record_answers() -> None:
    st = counted(
        {"status": 200, "key": "a", "pred": 0.2, "latency_ms": 5.0, "n": 1},
        {"status": 200, "key": "a", "pred": 0.4, "latency_ms": 7.0, "n": 50},  # a batch
        {"status": 500, "key": "b", "latency_ms": 9.0},
        {"status": 200, "pred": float("nan")},  # no key: its own unit; a NaN is no prediction
        {"status": 200, "ab": False, "pred": 0.9},  # pinned to the variant: not in the A/B
    )
    assert (st.requests, st.epoch_requests, st.explicit) == (5, 4, 1)
    assert (st.units, st.errors, st.epoch_errors) == (3, 1, 1)
    assert st.latency.values().tolist() == [5.0]
    assert st.predictions.n == 2 and abs(st.predictions.mean - 0.3) < 1e-12


def test_a_rerouted_request_counts_for_the_split_not_for_predictions() -> None:
    r = {"status": 200, "key": "a", "pred": 0.7, "rerouted": True}
    st = counted(r)
    assert (st.rerouted, st.units, st.predictions.n) == (1, 1, 0)
    assert not joinable(r) and joinable({"status": 200}) and not joinable({"status": 404})
    assert index_entry({"variant": "t", "key": "k", "pred": 0.1}) == {
        "variant": "t", "version": None, "pred": 0.1, "ab": True, "key": "k", "ts": None,
    }  # fmt: skip


def test_shadow_answers_are_counted_apart_from_drops_and_errors() -> None:
    sh = ShadowStats()
    for r in (
        {"dropped": True},
        {"ok": False},
        {"latency_ms": 4.0, "agree": True, "abs_diff": 0.1},
        {"latency_ms": 6.0, "agree": False, "abs_diff": 0.3},
    ):
        sh.count(r)
    report = sh.report()
    assert (sh.dropped, sh.mirrored, sh.errors, sh.compared) == (1, 3, 1, 2)
    assert report["agreement_rate"] == 0.5 and abs(report["mean_abs_diff"] - 0.2) < 1e-12


def arm(requests: int, errors: int, latency_ms: float) -> VariantStats:
    st = VariantStats()
    st.epoch_requests, st.epoch_errors = requests, errors
    for _ in range(requests):
        st.latency.add(latency_ms)
    return st


def test_guardrails_judge_only_enough_requests_and_name_the_bound_they_pass() -> None:
    g = Guardrails(min_requests=100, min_latency_samples=100)
    assert breach(g, arm(99, 0, 10.0), arm(99, 50, 10.0)) is None  # too few to judge
    assert breach(g, arm(100, 1, 10.0), arm(100, 2, 10.0)) is None  # 1 point: within 2
    errors = breach(g, arm(100, 1, 10.0), arm(100, 4, 10.0))
    assert errors is not None and "max_error_rate_delta" in errors
    slow = breach(g, arm(100, 0, 10.0), arm(100, 0, 40.0))
    assert slow is not None and "max_p99_ratio" in slow
    assert breach(g, arm(100, 0, 10.0), arm(100, 0, 30.0)) is None  # 3x, but only 20 ms more


def test_a_snapshot_puts_back_what_it_took() -> None:
    """`durability.state_of` then `load_state` on a fresh experiment of the same app: the same
    split, statistics and pending feedback (what a restart starts from, before the journal)."""

    first = Experiment(config(), VERSIONS)
    first.set_traffic(TrafficUpdate(weights={"treatment": 30}), source="test")
    first.ingest(requests_for("control", 40, key="k1") + requests_for("treatment", 30, status=500))
    first.feedback("not-seen-yet", 1.0)
    saved = json.loads(json.dumps(durability.state_of(first)))  # as it is written and read
    again = Experiment(config(), VERSIONS)
    durability.load_state(again, saved)
    assert durability.state_of(again) == saved
    assert again.allocation.shares() == first.allocation.shares()
    # Everything the report counts, but the latencies: a window of the current split only,
    # which a restart starts afresh (as a traffic change does).
    before, after = first.report()["variants"], again.report()["variants"]
    for v in (before, after):
        for stats in v.values():
            stats.pop("latency_ms")
    assert after == before and after["treatment"]["errors"] == 30
    assert first.report()["variants"]["control"]["latency_ms"]["p50"] == 5.0
    assert again.report()["variants"]["control"]["latency_ms"]["p50"] is None
    assert durability.entry_weight({"rows": [1, 2, 3]}) == 3 == 3 * durability.entry_weight({})


def test_a_traffic_change_is_resolved_or_refused_naming_the_field() -> None:

    weights, shadow = {"control": 90.0, "treatment": 10.0, "mirror": 0.0}, {"mirror": 50.0}
    now = traffic.resolve(TrafficUpdate(weights={"treatment": 30}), weights, shadow, "control")
    assert now == ({"control": 90.0, "treatment": 30.0, "mirror": 0.0}, {"mirror": 50.0}, "control")
    assert traffic.live_weights(*now[:2]) == {"control": 90.0, "treatment": 30.0}
    unshadowed = traffic.resolve(TrafficUpdate(shadow={"mirror": 0}), weights, shadow, "control")
    assert unshadowed[1] == {}  # a zero share is no shadow
    for update, named in (
        (TrafficUpdate(weights={"ghost": 5}), "weights: unknown variant(s) ['ghost']"),
        (TrafficUpdate(control="ghost"), "control: unknown variant 'ghost'"),
        (TrafficUpdate(weights={"mirror": 5}), "a variant is either live or shadow"),
        (TrafficUpdate(control="mirror", weights={"mirror": 0}), "control: 'mirror' is a shadow"),
        (TrafficUpdate(weights={"control": 0, "treatment": 0}), "at least one live variant"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(named)):
            traffic.resolve(update, weights, shadow, "control")
    assert traffic.deploy_hash({"weights": {"a": 90}}) == traffic.deploy_hash(
        {"weights": {"a": 90.0}}
    )


def test_the_join_holds_early_outcomes_and_forgets_the_oldest_first() -> None:
    now = [0.0]
    joins = FeedbackJoin(max_index=2, max_pending=2, clock=lambda: now[0], ttl_s=10.0)
    joins.remember("failed")
    assert joins.seen("failed") and not joins.has_outcome("failed")
    assert joins.add("a", {"variant": "control"}) is None  # nothing held for it
    joins.hold("b", 1.0, ts=0.0)  # its outcome came first
    assert joins.has_outcome("b") and not joins.seen("b")
    assert joins.add("b", {"variant": "treatment"}) == 1.0 and joins.pending == {}
    assert joins.join("b", 1.0) == {"variant": "treatment", "outcome": 1.0}
    assert joins.join("never-seen", 0.0) is None
    joins.add("c", {})
    assert list(joins.index) == ["b", "c"]  # over max_index: the oldest ("a") goes
    for i in range(3):
        joins.hold(f"early{i}", 0.0, ts=now[0])
    assert list(joins.pending) == ["early1", "early2"] and joins.dropped == 1
    now[0] = 11.0
    joins.hold("late", 1.0, ts=now[0])
    assert list(joins.pending) == ["late"] and joins.unmatched == 2  # expired after ttl_s


class Target:
    def __init__(self) -> None:
        self.weights = {"a": 1.0}


def test_a_change_that_cannot_be_saved_is_undone_and_says_nothing() -> None:
    target, sent, saves = Target(), [], []

    def save() -> None:
        saves.append(dict(target.weights))
        if target.weights.get("refused"):
            raise StorageError("storage refused (test)")

    changes = Changes(target, ("weights",), save, lambda kind, data: sent.append(kind))
    with changes():
        target.weights["b"] = 2.0
        changes.emit("first")
        with changes():  # nested: only the outermost saves
            changes.emit("second")
        assert sent == []  # held until saved
    assert saves == [{"a": 1.0, "b": 2.0}] and sent == ["first", "second"]
    with pytest.raises(StorageError), changes():
        target.weights["refused"] = 1.0
        changes.emit("third")
    assert target.weights == {"a": 1.0, "b": 2.0} and sent == ["first", "second"]
    changes.emit("outside")  # no change in progress: sent at once
    assert sent[-1] == "outside" and changes.depth == 0


def test_promotion_crowns_the_version_and_a_rollback_drops_only_its_own_alias() -> None:
    store = FakeAliases({"champion": 1, "challenger": 2})
    registry.crown(store, "m", 2)
    assert store.map == {"champion": 2, "previous_champion": 1}
    registry.crown(store, "m", 2)  # again: nothing else moves
    assert store.map == {"champion": 2, "previous_champion": 1}
    store.map["challenger"] = 3
    registry.drop(store, "m", "challenger", 4)  # names another version: left alone
    assert store.map["challenger"] == 3
    registry.drop(store, "m", "challenger", 3)
    assert "challenger" not in store.map


def test_snapshots_are_written_when_due_and_cover_the_journal(tmp_path: Path) -> None:
    now, seen = [100.0], list[int]()
    durable = durability.Durable(
        StateDir(tmp_path), clock=lambda: now[0], snapshot_s=2.0, compact_entries=3, keep=10,
        on_snapshot=seen.append,
    )  # fmt: skip
    assert durable.load() == (None, [])
    for i in range(3):
        durable.append({"kind": "feedback", "n": i})
    durable.save(lambda: {"v": 1})  # due: none written for snapshot_s
    now[0] = 101.0
    durable.append({"kind": "feedback", "n": 3})
    durable.save(lambda: {"v": 2})  # within snapshot_s: not written
    snapshot, entries = durable.load()
    assert snapshot == {"v": 1, "seq": 3} and seen == [3]
    assert durable.journal.pending == 1  # the three it covers were merged (compact_entries=3)
    assert [e["n"] for e in entries] == [0, 1, 2, 3]  # those it covers kept, merged, for the index
    durable.save(lambda: {"v": 3}, force=True)
    assert durable.load()[0] == {"v": 3, "seq": 4} and seen == [3, 4]
    durable.resumed(durable.load()[0], replayed=0, entries=4)
    assert durable.report()["restored"] == {"snapshot_seq": 4, "replayed": 0, "entries": 4}
    assert durable.report()["journal_seq"] == 4 and durable.report()["state_uri"] == str(tmp_path)
