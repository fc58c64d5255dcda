"""The experiment store: live traffic split, per-variant statistics, feedback joins, guardrails.

Pure Python (no Ray): the serving app runs one of these inside a single-replica deployment and
the routers stream request records to it in batches.

Durability (`state`, a local folder or an object store): every batch of request records and
every feedback is written to the journal before it is applied or acknowledged; a snapshot of the
split and the statistics, stamped with the journal entry it covers, is written every
`snapshot_s` and at once on every traffic change. A restart loads the snapshot, rebuilds the
join index from the journal, and replays the entries after it, so every acknowledged feedback
and every answered request a router delivered is counted exactly once after any crash (routers
deliver at least once; an id is counted once). A write that storage refuses is refused to the
caller (StorageError, a 503) with nothing changed, so the retry is safe.

Its parts: what a traffic change may set is `shipyard.ab.traffic`, and how one is saved or undone
`shipyard.ab.changes`; what is counted per variant and shadow is `shipyard.ab.ledger`; which
request an outcome belongs to is `shipyard.ab.joins`; the guardrails' thresholds are
`shipyard.ab.guardrails`; the A/B report and the mSPRT looks are `shipyard.ab.report`; the
journal and the snapshot are `shipyard.ab.durability`. This class owns the traffic table and
decides what is counted when (ingest, the feedback join, the replay after a restart).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shipyard.ab import aliases as registry
from shipyard.ab import durability, guardrails
from shipyard.ab import report as ab_report
from shipyard.ab import traffic as rules
from shipyard.ab.aliases import AliasStore
from shipyard.ab.changes import Changes
from shipyard.ab.joins import FeedbackJoin
from shipyard.ab.ledger import ShadowStats, VariantStats, index_entry, joinable
from shipyard.ab.routing import Allocation
from shipyard.config.serving import ServingConfig, TrafficUpdate
from shipyard.errors import Conflict, InvalidInput, ModelNotFound
from shipyard.events import EventLog
from shipyard.storage import StateDir

# What a traffic change touches: copied before, put back if its snapshot cannot be written.
_TRAFFIC_STATE = ("weights", "shadow", "control", "deploy_hash", "allocation", "epoch", "shadows",
                  "epoch_started", "config_version", "rolled_back", "stats")  # fmt: skip


class Experiment:
    """Traffic split, statistics and decisions of one serving app (one model, several variants)."""

    def __init__(
        self,
        cfg: ServingConfig,
        versions: dict[str, int],
        *,
        state: StateDir | None = None,
        aliases: AliasStore | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.time,
        max_index: int = 500_000,
        snapshot_s: float = 2.0,
        compact_entries: int = 100,
        on_snapshot: Callable[[int], None] | None = None,
    ) -> None:
        """`state`: where it persists (None: memory only). A snapshot is written at most every
        `snapshot_s`; the journal entries it covers are merged once there are `compact_entries`;
        `on_snapshot(seq)` is told the journal position of every snapshot written."""
        self.cfg = cfg
        self.versions = dict(versions)
        self.aliases = aliases
        self.events = events
        self.clock = clock
        self.identity = rules.content_hash({"model": cfg.model, "versions": self.versions})
        # One folder per set of variants: a new set starts afresh, the old one stays as it was.
        folder = f"experiment-v{durability.STATE_FORMAT}-{self.identity}"
        self.durable = (
            durability.Durable(state.child(folder), clock=clock, snapshot_s=snapshot_s,
                               compact_entries=compact_entries, keep=max_index,
                               on_snapshot=on_snapshot)
            if state else None
        )  # fmt: skip
        self.changes = Changes(self, _TRAFFIC_STATE, lambda: self.save(force=True), self._send)
        traffic = cfg.traffic()
        self.weights: dict[str, float] = dict(traffic["weights"])
        self.shadow: dict[str, float] = dict(traffic["shadow"])
        self.control: str = traffic["control"]
        self.deploy_hash = rules.deploy_hash(traffic)
        self.allocation = Allocation.initial(
            rules.live_weights(self.weights, self.shadow), self.control
        )
        self.epoch = 0
        self.epoch_started = self.clock()
        self.config_version = 0
        self.rolled_back: dict[str, str] = {}
        self.stats = {v.name: VariantStats() for v in cfg.variants}
        self.shadows = {v.name: ShadowStats() for v in cfg.variants}
        self.msprt: dict[str, dict[str, float | None]] = {}
        self.joins = FeedbackJoin(
            max_index=max_index, max_pending=cfg.limits.max_pending_feedback, clock=clock
        )
        self.started = self.clock()
        self.recovered = 0  # rows taken from segments routers left, since this replica started
        if self.durable is not None:
            self._restore(self.durable)

    # --- traffic ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What routers need to route: the bucket table, shadow shares, control, versions."""
        return {
            "config_version": self.config_version,
            "allocation": self.allocation.to_json(),
            "weights": dict(self.weights),
            "shadow": dict(self.shadow),
            "control": self.control,
            "versions": dict(self.versions),
            "salt": self.cfg.salt,
        }

    def set_traffic(self, update: TrafficUpdate, source: str) -> dict[str, Any]:
        """Change weights/shadow shares/control; buckets move only through control. A change of
        the live split (weights or control) starts a new epoch of the statistics."""
        weights, shadow, control = rules.resolve(update, self.weights, self.shadow, self.control)
        new = {"weights": weights, "shadow": shadow, "control": control}
        old = {"weights": dict(self.weights), "shadow": dict(self.shadow), "control": self.control}
        if new == old:
            return self.snapshot()
        with self.changes():
            self.allocation = self.allocation.rebalance(
                rules.live_weights(weights, shadow), control
            )
            self.weights, self.shadow, self.control = weights, shadow, control
            for n, w in weights.items():
                if w > 0:
                    self.rolled_back.pop(n, None)
            if weights != old["weights"] or control != old["control"]:
                self.epoch += 1
                self.epoch_started = self.clock()
                for st in self.stats.values():
                    st.new_epoch()
            self.config_version += 1
            self.changes.emit("traffic_changed", source=source, old=old, new=new)
        return self.snapshot()

    def apply_deploy(self, traffic: dict[str, Any]) -> bool:
        """A `serve deploy` user_config: applied only when it differs from the last one deployed.

        Routers call this on every (re)start with the deployed user_config; a restart must not
        undo changes made since through PUT /variants or a guardrail rollback.
        """
        h = rules.deploy_hash(traffic)
        if h == self.deploy_hash:
            return False
        with self.changes():
            self.set_traffic(TrafficUpdate.model_validate(traffic), source="serve deploy")
            self.deploy_hash = h
        return True

    def rollback(self, name: str, reason: str, source: str) -> dict[str, Any]:
        """Take a treatment out of live traffic; its `challenger` alias goes with it."""
        self._check_variant(name)
        if name == self.control:
            raise Conflict(f"variant {name!r} is the control; promote another variant instead")
        if self.weights.get(name, 0) <= 0:
            raise Conflict(f"variant {name!r} takes no live traffic; nothing to roll back")
        if self.aliases is not None:  # registry first: if it fails, traffic is untouched
            registry.drop(self.aliases, self.cfg.model, "challenger", self.versions[name])
        with self.changes():
            self.set_traffic(TrafficUpdate(weights={name: 0.0}), source=source)
            self.rolled_back[name] = reason
            self.changes.emit(
                "canary_rolled_back", variant=name, version=self.versions[name], reason=reason
            )
        return self.snapshot()

    def promote(self, name: str, source: str) -> dict[str, Any]:
        """All live traffic to `name`, which becomes control and the registry's champion."""
        self._check_variant(name)
        live = rules.live_weights(self.weights, self.shadow)
        if name == self.control and live.get(name, 0) == sum(live.values()):
            raise Conflict(f"variant {name!r} is already the control with all live traffic")
        version = self.versions[name]
        if self.aliases is not None:  # registry first: if it fails, traffic is untouched
            registry.crown(self.aliases, self.cfg.model, version)
        weights = {n: (100.0 if n == name else 0.0) for n in self.weights}
        shadow = {n: 0.0 for n in self.shadow if n == name}
        with self.changes():
            self.set_traffic(TrafficUpdate(weights=weights, shadow=shadow, control=name), source)
            self.changes.emit("traffic_promoted", variant=name, version=version, source=source)
        return self.snapshot()

    def _check_variant(self, name: str) -> None:
        if name not in self.weights:
            raise ModelNotFound(f"no variant {name!r}; variants: {list(self.weights)}")

    # --- ingest -------------------------------------------------------------------------------
    def ingest(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Request and shadow records from routers; returns the guardrail actions taken.

        Journaled before they are applied: if storage refuses, nothing is applied and the
        StorageError tells the router to send the batch again. Routers deliver at least once (a
        flush that timed out is sent again); a request id is counted once.
        """
        return self._ingest(records)[0]

    def recover(self, rows: list[dict[str, Any]]) -> int:
        """Rows from a segment a router left (`shipyard.ab.segments.collect`), ingested as a
        router's batch; how many were new (not delivered by the router before it went)."""
        new = self._ingest(rows)[1]
        self.recovered += new
        return new

    def _ingest(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The guardrail actions taken, and how many rows were new."""
        fresh = [r for r in records if "id" not in r or not self.joins.seen(r["id"])]
        if fresh and self.durable is not None:
            self.durable.append({"kind": "ingest", "rows": fresh})
        self._apply_ingest(fresh, count=True)
        actions = self.check_guardrails()
        self.save()
        return actions, len(fresh)

    def _apply_ingest(self, rows: list[dict[str, Any]], count: bool) -> None:
        """`count=False`: only the join index (entries a snapshot already counted)."""
        for r in rows:
            kind = r.get("t")
            if kind == "req":
                self._ingest_request(r, count)
            elif kind == "shadow" and not ("id" in r and self.joins.seen(r["id"])):
                shadow = self.shadows.get(r["variant"])
                if count and shadow is not None:
                    shadow.count(r)
                if "id" in r:
                    self.joins.remember(r["id"])

    def _ingest_request(self, r: dict[str, Any], count: bool) -> None:
        st = self.stats.get(r["variant"])
        rid = r["id"]
        if st is None or self.joins.seen(rid):
            return
        if count:
            st.count(r)
        if not joinable(r):  # not joinable, but remembered for de-duplication
            self.joins.remember(rid)
            return
        held = self.joins.add(rid, index_entry({**r, "ts": r.get("ts", self.clock())}))
        if held is not None:
            self._join(rid, held, count)

    # --- feedback -----------------------------------------------------------------------------
    def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        """Join an observed outcome to the request it belongs to (or hold it until it arrives).
        Journaled before it is applied and acknowledged (StorageError: nothing stored)."""
        if self.cfg.ab.metric == "conversion" and outcome not in (0, 1):
            raise InvalidInput(
                f"outcome: {outcome!r} is not a conversion; ab.metric is 'conversion', so "
                "outcome must be 0, 1, true or false"
            )
        if self.joins.has_outcome(request_id):
            raise Conflict(f"request_id {request_id!r} already has an outcome")
        ts = self.clock()
        if self.durable is not None:
            self.durable.append(
                {"kind": "feedback", "id": request_id, "outcome": float(outcome), "ts": ts}
            )
        answer = self._apply_feedback(request_id, float(outcome), ts)
        self.save()
        return answer

    def _apply_feedback(self, request_id: str, outcome: float, ts: float) -> dict[str, Any]:
        entry = self.joins.index.get(request_id)
        if entry is None and self.joins.settle(request_id, outcome):
            return {"request_id": request_id, "joined": False, "status": "not_counted"}
        if entry is None:
            self.joins.hold(request_id, outcome, ts)
            return {"request_id": request_id, "joined": False, "status": "pending"}
        if "outcome" not in entry:
            self._join(request_id, outcome, count=True)
        return {
            "request_id": request_id,
            "joined": True,
            "variant": entry["variant"],
            "model_version": entry["version"],
            "prediction": entry["pred"],
            "counted": entry["ab"],
        }

    def _join(self, request_id: str, outcome: float, count: bool) -> None:
        entry = self.joins.join(request_id, outcome)
        if entry is not None and entry["ab"] and count:
            st = self.stats[entry["variant"]]
            st.outcomes.push(outcome)
            st.keyed.push(entry.get("key"), outcome)
            ab_report.look(self)

    # --- statistics ---------------------------------------------------------------------------
    def check_guardrails(self) -> list[dict[str, Any]]:
        g = self.cfg.guardrails
        if not g.enabled:
            return []
        actions = []
        for name, w in list(self.weights.items()):
            if name == self.control or w <= 0:
                continue
            reason = self.guardrail_breach(name)
            if reason:
                self.rollback(name, reason, source="guardrail")
                actions.append({"action": "rollback", "variant": name, "reason": reason})
        return actions

    def guardrail_breach(self, name: str) -> str | None:
        """Why a treatment breaches its guardrails against control, or None."""
        return guardrails.breach(self.cfg.guardrails, self.stats[self.control], self.stats[name])

    def report(self) -> dict[str, Any]:
        """GET /ab: per-variant statistics, comparisons with control, SRM, a recommendation."""
        return ab_report.report(self)

    # --- persistence --------------------------------------------------------------------------
    def _send(self, kind: str, data: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.emit(kind, model=self.cfg.model, **data)

    def save(self, force: bool = False) -> None:
        """Snapshot the split and the statistics (`durability.Durable.save`): at most every
        `snapshot_s`, or at once when forced (StorageError then refuses the change). A forced
        one (a change) first takes a journal number: a replica another has taken over from is
        fenced there (`Fenced`) and cannot overwrite the newer one's snapshot."""
        if self.durable is not None:
            if force:
                self.durable.append({"kind": "change"})
            self.durable.save(lambda: durability.state_of(self), force)

    def _restore(self, durable: durability.Durable) -> None:
        """Newest snapshot + the journal: entries it covers rebuild the join index only; the
        entries after it are applied as they were the first time."""
        snapshot, entries = durable.load()
        covered = 0
        if snapshot is not None:
            durability.load_state(self, snapshot)
            covered = int(snapshot["seq"])
        replayed = 0
        early: dict[str, float] = {}  # covered outcomes that came before their request
        for e in entries:
            count = int(e["seq"]) > covered
            replayed += count
            if e["kind"] == "ingest":
                self._apply_ingest(e["rows"], count)
            elif e["kind"] != "feedback":  # a change's number: the snapshot after it holds it
                continue
            elif count:
                self._apply_feedback(e["id"], float(e["outcome"]), float(e["ts"]))
            elif self.joins.join(e["id"], float(e["outcome"])) is None:
                early[e["id"]] = float(e["outcome"])
        for request_id, outcome in early.items():  # counted by the snapshot: marked, not counted
            if request_id not in self.joins.pending:
                self.joins.join(request_id, outcome)
        durable.resumed(snapshot, replayed, len(entries))
        if replayed:
            self.check_guardrails()
            self.save(force=True)

    def storage_report(self) -> dict[str, Any] | None:
        """Where the state is and how far it has been written (GET /ab -> store)."""
        if self.durable is None:
            return None
        return {**self.durable.report(), "recovered_rows": self.recovered}
