"""The experiment store without Ray: traffic changes, joins, guardrails, aliases, restart."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from shipyard.ab.experiment import Experiment
from shipyard.config.serving import ServingConfig, TrafficUpdate, parse_serving_config
from shipyard.errors import Conflict, InvalidInput, ModelNotFound
from shipyard.events import EventLog
from shipyard.storage import StateDir


class FakeAliases:
    def __init__(self, aliases: dict[str, int]) -> None:
        self.map = dict(aliases)

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.map)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.map[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self.map.pop(alias)


VARIANTS = [
    {"name": "control", "version": "champion", "weight": 90},
    {"name": "treatment", "version": 2, "weight": 10},
    {"name": "cand", "version": 3, "shadow": 20},
]


def config(**extra: Any) -> ServingConfig:
    return parse_serving_config(
        {
            "model": "m",
            "variants": VARIANTS,
            "guardrails": {"min_requests": 50},
            "ab": {"min_outcomes": 20},
            **extra,
        }
    )


VERSIONS = {"control": 1, "treatment": 2, "cand": 3}
_ids = itertools.count()


def requests_for(
    variant: str, n: int, status: int = 200, latency: float = 5.0, **kw: Any
) -> list[dict[str, Any]]:
    return [
        {"t": "req", "id": f"r{next(_ids)}", "variant": variant, "version": VERSIONS[variant],
         "status": status, "latency_ms": latency, "pred": 0.5, "ab": True, **kw}
        for _ in range(n)
    ]  # fmt: skip


@pytest.fixture
def exp(tmp_path: Path) -> Experiment:
    return Experiment(
        config(),
        VERSIONS,
        state=StateDir(tmp_path / "state"),
        aliases=FakeAliases({"champion": 1, "challenger": 2}),
        events=EventLog(tmp_path / "events.jsonl"),
    )


def test_initial_split_and_traffic_change(exp: Experiment) -> None:
    assert exp.allocation.shares() == {"control": 0.9, "treatment": 0.1}
    snap = exp.set_traffic(TrafficUpdate(weights={"treatment": 30}), source="test")
    assert snap["config_version"] == 1 and exp.allocation.shares()["treatment"] == pytest.approx(
        0.25
    )
    assert exp.epoch == 1
    kinds = [e["kind"] for e in exp.events.read()]  # type: ignore[union-attr]
    assert kinds == ["traffic_changed"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"weights": {"nope": 1}}, "unknown variant"),
        ({"weights": {"control": 0, "treatment": 0}}, "at least one live variant"),
        ({"shadow": {"treatment": 10}}, "either live or shadow"),
        ({"control": "cand"}, "shadow variant"),
    ],
)
def test_bad_traffic_changes_leave_traffic_as_it_was(
    exp: Experiment, update: dict[str, Any], message: str
) -> None:
    before = exp.snapshot()
    with pytest.raises(InvalidInput, match=message):
        exp.set_traffic(TrafficUpdate.model_validate(update), source="test")
    assert exp.snapshot() == before


def test_deploy_config_applies_once(exp: Experiment) -> None:
    same = {
        "weights": {"control": 90, "treatment": 10, "cand": 0},
        "shadow": {"cand": 20},
        "control": "control",
    }
    assert exp.apply_deploy(same) is False  # a router restart re-sends what was deployed
    exp.set_traffic(TrafficUpdate(weights={"treatment": 50}), source="PUT /variants")
    assert exp.apply_deploy(same) is False  # ... and must not undo a later live change
    assert exp.weights["treatment"] == 50
    changed = {**same, "weights": {"control": 80, "treatment": 20}}
    assert exp.apply_deploy(changed) is True and exp.weights["treatment"] == 20


def test_feedback_joins_now_or_when_the_request_arrives(exp: Experiment) -> None:
    recs = requests_for("treatment", 1)
    exp.ingest(recs)
    got = exp.feedback(recs[0]["id"], 1)
    assert got["joined"] and got["variant"] == "treatment" and got["model_version"] == 2
    with pytest.raises(Conflict):
        exp.feedback(recs[0]["id"], 0)
    early = exp.feedback("later", 0)
    assert early["status"] == "pending"
    exp.ingest([{**requests_for("control", 1)[0], "id": "later"}])
    assert exp.stats["control"].outcomes.n == 1 and exp.stats["treatment"].outcomes.n == 1
    # One unit per arm has no interval yet: null, not NaN (which JSON cannot carry).
    report = json.loads(json.dumps(exp.report(), allow_nan=False))
    assert report["variants"]["treatment"]["outcome_ci95"] is None
    with pytest.raises(InvalidInput, match="outcome"):
        exp.feedback("x", 0.5)


def test_explicit_requests_are_not_in_ab_statistics(exp: Experiment) -> None:
    exp.ingest(requests_for("treatment", 5, ab=False))
    st = exp.stats["treatment"]
    assert st.explicit == 5 and st.units == 0 and st.epoch_requests == 0


def test_srm_counts_units_not_requests(exp: Experiment) -> None:
    exp.ingest(requests_for("control", 900, key="same-user") + requests_for("treatment", 100))
    srm = exp.report()["srm"]
    assert srm["observed"] == {"control": 1, "treatment": 100} and srm["flagged"]
    exp.set_traffic(TrafficUpdate(weights={"treatment": 50, "control": 50}), source="test")
    exp.ingest(
        [
            r | {"key": r["id"]}
            for r in requests_for("control", 500) + requests_for("treatment", 480)
        ]
    )
    assert not exp.report()["srm"]["flagged"]


def test_error_guardrail_rolls_back_and_moves_the_alias(exp: Experiment) -> None:
    exp.ingest(requests_for("control", 100))
    actions = exp.ingest(requests_for("treatment", 40) + requests_for("treatment", 20, status=503))
    assert actions and actions[0]["variant"] == "treatment" and "error rate" in actions[0]["reason"]
    assert exp.weights["treatment"] == 0 and exp.allocation.shares()["treatment"] == 0
    assert exp.aliases.aliases("m") == {"champion": 1}  # type: ignore[union-attr]
    assert [e["kind"] for e in exp.events.read()][-1] == "canary_rolled_back"  # type: ignore[union-attr]
    assert exp.report()["comparisons"]["treatment"]["recommendation"] == "roll back"


def test_no_rollback_below_the_minimum_sample(exp: Experiment) -> None:
    exp.ingest(requests_for("control", 100) + requests_for("treatment", 10, status=503))
    assert exp.weights["treatment"] == 10


def test_latency_guardrail_needs_enough_samples(tmp_path: Path) -> None:
    e = Experiment(config(guardrails={"min_requests": 50, "min_latency_samples": 300}), VERSIONS)
    e.ingest(requests_for("control", 300, latency=5) + requests_for("treatment", 100, latency=200))
    assert e.weights["treatment"] == 10  # 100 samples: not judged yet
    actions = e.ingest(requests_for("treatment", 200, latency=200))
    assert actions and "p99 latency" in actions[0]["reason"]


def test_promote_moves_champion_and_all_traffic(exp: Experiment) -> None:
    exp.promote("treatment", source="test")
    assert exp.control == "treatment" and exp.allocation.shares()["treatment"] == 1.0
    assert exp.aliases.aliases("m") == {"champion": 2, "previous_champion": 1}  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        exp.promote("treatment", source="test")
    with pytest.raises(ModelNotFound):
        exp.promote("nope", source="test")


def test_failed_registry_update_leaves_traffic_alone(exp: Experiment) -> None:
    class Down(FakeAliases):
        def set_alias(self, name: str, alias: str, version: int) -> None:
            raise ConnectionError("registry down")

    exp.aliases = Down({"champion": 1})
    before = exp.snapshot()
    with pytest.raises(ConnectionError):
        exp.promote("treatment", source="test")
    assert exp.snapshot() == before


def test_an_outcome_of_a_request_that_counts_for_no_variant_is_kept_not_held(
    tmp_path: Path,
) -> None:
    """A request another variant answered (its own was out of routing, or failed) counts for
    no variant's outcomes: its outcome is kept as not counted, at once or when the request
    arrives after it, never held as pending for a request that came already (found losing a
    node: 20 outcomes waited forever); sent again, a 409; a restart keeps all of it."""
    kw = {"state": StateDir(tmp_path / "s"), "aliases": FakeAliases({"champion": 1})}
    first = Experiment(config(), VERSIONS, **kw)  # type: ignore[arg-type]
    rerouted = requests_for("treatment", 1, rerouted=True)
    failed = requests_for("treatment", 1, status=504)  # control answered the client
    first.ingest(rerouted + failed)
    assert first.feedback(rerouted[0]["id"], 1)["status"] == "not_counted"
    early = requests_for("treatment", 1, rerouted=True)
    assert first.feedback(early[0]["id"], 0)["status"] == "pending"
    first.ingest(early)  # its request came after it
    assert first.feedback(failed[0]["id"], 1)["status"] == "not_counted"
    report = first.report()
    assert report["feedback_pending"] == 0 and report["feedback_not_counted"] == 3
    assert sum(v["outcomes"] for v in report["variants"].values()) == 0
    with pytest.raises(Conflict):
        first.feedback(early[0]["id"], 1)
    again = Experiment(config(), VERSIONS, **kw)  # type: ignore[arg-type]
    assert again.report()["feedback_not_counted"] == 3 and again.report()["feedback_pending"] == 0
    for r in rerouted + failed + early:
        with pytest.raises(Conflict):
            again.feedback(r["id"], 1)


def test_restart_resumes_split_statistics_and_joins(tmp_path: Path) -> None:
    kw = {"state": StateDir(tmp_path / "s"), "aliases": FakeAliases({"champion": 1})}
    first = Experiment(config(), VERSIONS, **kw)  # type: ignore[arg-type]
    first.set_traffic(TrafficUpdate(weights={"treatment": 40}), source="test")
    recs = requests_for("treatment", 3)
    first.ingest(recs)
    first.feedback(recs[0]["id"], 1)
    first.save(force=True)
    again = Experiment(config(), VERSIONS, **kw)  # type: ignore[arg-type]
    assert again.snapshot() == first.snapshot()
    assert again.stats["treatment"].outcomes.n == 1 and again.stats["treatment"].requests == 3
    assert again.feedback(recs[1]["id"], 0)["joined"]  # the index came back from the log
    with pytest.raises(Conflict):
        again.feedback(recs[0]["id"], 1)
    # Different versions: a new experiment beside the old one.
    other = Experiment(config(), {**VERSIONS, "treatment": 7}, **kw)  # type: ignore[arg-type]
    other.ingest(requests_for("treatment", 1))
    assert other.config_version == 0 and len(list((tmp_path / "s").glob("experiment-*"))) == 2


def test_report_compares_treatment_with_control(exp: Experiment) -> None:
    exp.set_traffic(TrafficUpdate(weights={"control": 50, "treatment": 50}), source="test")
    c, t = requests_for("control", 400), requests_for("treatment", 400)
    exp.ingest(c + t)
    for i, r in enumerate(c):
        exp.feedback(r["id"], int(i % 10 < 2))  # 20%
    for i, r in enumerate(t):
        exp.feedback(r["id"], int(i % 10 < 3))  # 30%
    rep = exp.report()
    cmp = rep["comparisons"]["treatment"]
    assert rep["variants"]["control"]["outcome_mean"] == pytest.approx(0.2)
    assert cmp["difference"] == pytest.approx(0.1) and cmp["lift"] == pytest.approx(0.5)
    assert cmp["p_value"] < 0.01 and cmp["sequential_p_value"] < 0.05
    assert cmp["recommendation"] == "promote"


def test_a_batch_delivered_twice_is_counted_once(exp: Experiment) -> None:
    batch = requests_for("treatment", 3) + requests_for("treatment", 2, status=503)
    exp.ingest(batch)
    exp.ingest(batch)  # a router re-sends a flush whose answer it did not get
    st = exp.stats["treatment"]
    assert st.requests == 5 and st.errors == 2 and st.epoch_requests == 5


def test_outcomes_are_analysed_per_key_and_treatments_are_a_family(tmp_path: Path) -> None:
    three_arms = [{**VARIANTS[0], "weight": 50}, {**VARIANTS[1], "weight": 25},
                  {"name": "cand", "version": 3, "weight": 25}]  # fmt: skip
    exp = Experiment(
        config(variants=three_arms),
        VERSIONS,
        state=StateDir(tmp_path / "s"),
        aliases=FakeAliases({}),
    )
    # 40 keys per variant, 20 requests each; a key converts on all its requests or none.
    for variant, converting in (("control", 8), ("treatment", 12), ("cand", 8)):
        for k in range(40):
            recs = requests_for(variant, 20, key=f"{variant}-{k}")
            exp.ingest(recs)
            for r in recs:
                exp.feedback(r["id"], int(k < converting))
    rep = exp.report()
    treatment = rep["comparisons"]["treatment"]
    assert rep["variants"]["treatment"]["outcome_units"] == 40
    assert "delta-method variance over 40 + 40 units" in treatment["test"]
    # 800 requests per arm but 40 units: 30% vs 20% is not significant per key (it would be
    # per request, p ~ 1e-5).
    assert treatment["p_value"] > 0.2
    lo, hi = rep["variants"]["treatment"]["outcome_ci95"]
    assert hi - lo > 0.2  # ~ the width of 40 Bernoulli draws, not of 800
    assert treatment["family"] == {"treatments": 2, "correction": "holm"}
    assert treatment["sequential_p_adjusted"] >= treatment["sequential_p_value"]
