"""The experiment's parts on their own: what the ledger counts of a router's record, when a
treatment breaches its guardrails, what a snapshot puts back, what a traffic change may set (the
experiment's own tests drive them end to end)."""

import json
import re
from typing import Any

import pytest

from shipyard.ab import durability, traffic
from shipyard.ab.experiment import Experiment
from shipyard.ab.guardrails import breach
from shipyard.ab.ledger import ShadowStats, VariantStats, index_entry, joinable
from shipyard.config.serving import Guardrails, TrafficUpdate
from shipyard.errors import InvalidInput
from tests.unit.test_experiment import VERSIONS, config, requests_for


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
