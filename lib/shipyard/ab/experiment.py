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

Its parts: what a traffic change may set is `shipyard.ab.traffic`; what is counted per variant
and shadow is `shipyard.ab.ledger`; the guardrails' thresholds are `shipyard.ab.guardrails`; the
A/B report and the mSPRT looks are `shipyard.ab.report`; what a snapshot holds is
`shipyard.ab.durability`. This class decides when to count (ingest, de-duplication, the feedback
join), owns the traffic table, and journals, snapshots and replays.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from shipyard.ab import durability, guardrails
from shipyard.ab import report as ab_report
from shipyard.ab import traffic as rules
from shipyard.ab.ledger import ShadowStats, VariantStats, index_entry, joinable
from shipyard.ab.routing import Allocation
from shipyard.config.serving import ServingConfig, TrafficUpdate
from shipyard.errors import Conflict, InvalidInput, ModelNotFound, StorageError
from shipyard.events import EventLog
from shipyard.storage import Journal, StateDir

logger = logging.getLogger(__name__)

FEEDBACK_TTL_S = 600.0
# What a traffic change touches: copied before, put back if its snapshot cannot be written.
_TRAFFIC_STATE = ("weights", "shadow", "control", "deploy_hash", "allocation", "epoch", "shadows",
                  "epoch_started", "config_version", "rolled_back", "stats")  # fmt: skip


class AliasStore(Protocol):
    """What the experiment needs of the registry: read and move aliases."""

    def aliases(self, name: str) -> dict[str, int]: ...
    def set_alias(self, name: str, alias: str, version: int) -> None: ...
    def delete_alias(self, name: str, alias: str) -> None: ...


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
        self.max_index = max_index
        self.snapshot_s = snapshot_s
        self.compact_entries = compact_entries
        self.on_snapshot = on_snapshot
        self.identity = rules.content_hash({"model": cfg.model, "versions": self.versions})
        # One folder per set of variants: a new set starts afresh, the old one stays as it was.
        self.state = (
            state.child(f"experiment-v{durability.STATE_FORMAT}-{self.identity}") if state else None
        )
        self.journal = Journal(self.state.child("journal")) if self.state else None
        self._outbox: list[tuple[str, dict[str, Any]]] = []  # events sent once a change is saved
        traffic = cfg.traffic()
        self.weights: dict[str, float] = dict(traffic["weights"])
        self.shadow: dict[str, float] = dict(traffic["shadow"])
        self.control: str = traffic["control"]
        self.deploy_hash = rules.deploy_hash(traffic)
        self.allocation = Allocation.initial(self._live_weights(), self.control)
        self.epoch = 0
        self.epoch_started = self.clock()
        self.config_version = 0
        self.rolled_back: dict[str, str] = {}
        self.stats = {v.name: VariantStats() for v in cfg.variants}
        self.shadows = {v.name: ShadowStats() for v in cfg.variants}
        self.msprt: dict[str, dict[str, float | None]] = {}
        self.index: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._depth = 0  # nesting of traffic changes (`_change`)
        self.pending: dict[str, tuple[float, float]] = {}
        self._unindexed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.feedback_unmatched = 0
        self.feedback_dropped = 0  # pending outcomes dropped over limits.max_pending_feedback
        self.started = self.clock()
        self._saved = 0.0
        self.restored: dict[str, int] | None = None  # what the last restart found
        if self.state is not None:
            self._restore()

    # --- traffic ------------------------------------------------------------------------------
    def _live_weights(self) -> dict[str, float]:
        return rules.live_weights(self.weights, self.shadow)

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

    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """A traffic change is saved at once or undone: on a StorageError (or any error) every
        field it touched is put back and its events are not sent. Changes nest (a rollback
        sets traffic); the outermost one saves."""
        self._depth += 1
        if self._depth > 1:
            try:
                yield
            finally:
                self._depth -= 1
            return
        before = copy.deepcopy({k: getattr(self, k) for k in _TRAFFIC_STATE})
        try:
            yield
            self.save(force=True)
        except BaseException:
            for k, v in before.items():
                setattr(self, k, v)
            self._outbox.clear()
            raise
        finally:
            self._depth -= 1
        outbox, self._outbox = self._outbox, []
        for kind, data in outbox:
            self._send(kind, data)

    def set_traffic(self, update: TrafficUpdate, source: str) -> dict[str, Any]:
        """Change weights/shadow shares/control; buckets move only through control."""
        with self._change():
            return self._set_traffic(update, source)

    def _set_traffic(self, update: TrafficUpdate, source: str) -> dict[str, Any]:
        weights, shadow, control = rules.resolve(update, self.weights, self.shadow, self.control)
        live = rules.live_weights(weights, shadow)
        if weights == self.weights and shadow == self.shadow and control == self.control:
            return self.snapshot()
        old = {"weights": dict(self.weights), "shadow": dict(self.shadow), "control": self.control}
        split_changed = weights != self.weights or control != self.control
        self.allocation = self.allocation.rebalance(live, control)
        self.weights, self.shadow, self.control = weights, shadow, control
        for n, w in weights.items():
            if w > 0:
                self.rolled_back.pop(n, None)
        if split_changed:
            self._new_epoch()
        self.config_version += 1
        self._emit(
            "traffic_changed",
            source=source,
            old=old,
            new={"weights": weights, "shadow": shadow, "control": control},
        )
        return self.snapshot()

    def apply_deploy(self, traffic: dict[str, Any]) -> bool:
        """A `serve deploy` user_config: applied only when it differs from the last one deployed.

        Routers call this on every (re)start with the deployed user_config; a restart must not
        undo changes made since through PUT /variants or a guardrail rollback.
        """
        h = rules.deploy_hash(traffic)
        if h == self.deploy_hash:
            return False
        with self._change():
            self.set_traffic(TrafficUpdate.model_validate(traffic), source="serve deploy")
            self.deploy_hash = h
        return True

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.epoch_started = self.clock()
        for st in self.stats.values():
            st.new_epoch()

    def rollback(self, name: str, reason: str, source: str) -> dict[str, Any]:
        """Take a treatment out of live traffic; its `challenger` alias goes with it."""
        self._check_variant(name)
        if name == self.control:
            raise Conflict(f"variant {name!r} is the control; promote another variant instead")
        if self.weights.get(name, 0) <= 0:
            raise Conflict(f"variant {name!r} takes no live traffic; nothing to roll back")
        self._move_alias_off(name, "challenger")
        with self._change():
            self.set_traffic(TrafficUpdate(weights={name: 0.0}), source=source)
            self.rolled_back[name] = reason
            self._emit(
                "canary_rolled_back", variant=name, version=self.versions[name], reason=reason
            )
        return self.snapshot()

    def promote(self, name: str, source: str) -> dict[str, Any]:
        """All live traffic to `name`, which becomes control and the registry's champion."""
        self._check_variant(name)
        if name == self.control and self._live_weights().get(name, 0) == sum(
            self._live_weights().values()
        ):
            raise Conflict(f"variant {name!r} is already the control with all live traffic")
        version = self.versions[name]
        if self.aliases is not None:  # registry first: if it fails, traffic is untouched
            current = self.aliases.aliases(self.cfg.model)
            previous = current.get("champion")
            self.aliases.set_alias(self.cfg.model, "champion", version)
            if previous is not None and previous != version:
                self.aliases.set_alias(self.cfg.model, "previous_champion", previous)
            if current.get("challenger") == version:
                self.aliases.delete_alias(self.cfg.model, "challenger")
        weights = {n: (100.0 if n == name else 0.0) for n in self.weights}
        shadow = {n: 0.0 for n in self.shadow if n == name}
        with self._change():
            self.set_traffic(TrafficUpdate(weights=weights, shadow=shadow, control=name), source)
            self._emit("traffic_promoted", variant=name, version=version, source=source)
        return self.snapshot()

    def _move_alias_off(self, name: str, alias: str) -> None:
        if self.aliases is None:
            return
        if self.aliases.aliases(self.cfg.model).get(alias) == self.versions[name]:
            self.aliases.delete_alias(self.cfg.model, alias)

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
        fresh = [r for r in records if "id" not in r or not self._seen(r["id"])]
        if fresh:
            self._journal({"kind": "ingest", "rows": fresh})
        self._apply_ingest(fresh, count=True)
        actions = self.check_guardrails()
        self.save()
        return actions

    def _seen(self, request_id: str) -> bool:
        return request_id in self.index or request_id in self._unindexed

    def _apply_ingest(self, rows: list[dict[str, Any]], count: bool) -> None:
        """`count=False`: only the join index (entries a snapshot already counted)."""
        for r in rows:
            kind = r.get("t")
            if kind == "req":
                self._ingest_request(r, count)
            elif kind == "shadow" and not ("id" in r and self._seen(r["id"])):
                shadow = self.shadows.get(r["variant"])
                if count and shadow is not None:
                    shadow.count(r)
                if "id" in r:
                    self._remember(r["id"])

    def _ingest_request(self, r: dict[str, Any], count: bool) -> None:
        st = self.stats.get(r["variant"])
        rid = r["id"]
        if st is None or self._seen(rid):
            return
        if count:
            st.count(r)
        if not joinable(r):  # not joinable, but remembered for de-duplication
            self._remember(rid)
            return
        self.index[rid] = index_entry({**r, "ts": r.get("ts", self.clock())})
        while len(self.index) > self.max_index:
            self.index.popitem(last=False)
        if rid in self.pending:
            outcome, _ = self.pending.pop(rid)
            self._join(rid, outcome, count)

    def _remember(self, row_id: str) -> None:
        """An id counted but not joinable (a failed request, a shadow answer)."""
        self._unindexed[row_id] = None
        while len(self._unindexed) > self.max_index:
            self._unindexed.popitem(last=False)

    # --- feedback -----------------------------------------------------------------------------
    def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        """Join an observed outcome to the request it belongs to (or hold it until it arrives).
        Journaled before it is applied and acknowledged (StorageError: nothing stored)."""
        if self.cfg.ab.metric == "conversion" and outcome not in (0, 1):
            raise InvalidInput(
                f"outcome: {outcome!r} is not a conversion; ab.metric is 'conversion', so "
                "outcome must be 0, 1, true or false"
            )
        entry = self.index.get(request_id)
        if request_id in self.pending or (entry is not None and "outcome" in entry):
            raise Conflict(f"request_id {request_id!r} already has an outcome")
        ts = self.clock()
        self._journal({"kind": "feedback", "id": request_id, "outcome": float(outcome), "ts": ts})
        answer = self._apply_feedback(request_id, float(outcome), ts)
        self.save()
        return answer

    def _apply_feedback(self, request_id: str, outcome: float, ts: float) -> dict[str, Any]:
        entry = self.index.get(request_id)
        if entry is None:
            self._expire_pending()
            self.pending[request_id] = (outcome, ts)
            while len(self.pending) > self.cfg.limits.max_pending_feedback:
                del self.pending[next(iter(self.pending))]  # the oldest
                self.feedback_dropped += 1
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
        entry = self.index[request_id]
        entry["outcome"] = outcome
        if entry["ab"] and count:
            st = self.stats[entry["variant"]]
            st.outcomes.push(outcome)
            st.keyed.push(entry.get("key"), outcome)
            ab_report.look(self)

    def _expire_pending(self) -> None:
        cutoff = self.clock() - FEEDBACK_TTL_S
        stale = [k for k, (_, ts) in self.pending.items() if ts < cutoff]
        for k in stale:
            del self.pending[k]
        self.feedback_unmatched += len(stale)

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
    def _emit(self, kind: str, **data: Any) -> None:
        """Events of a traffic change are sent once it is saved (`_change`)."""
        if self._depth:
            self._outbox.append((kind, data))
        else:
            self._send(kind, data)

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.emit(kind, model=self.cfg.model, **data)

    def _journal(self, entry: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.append(entry)

    def save(self, force: bool = False) -> None:
        """Write a snapshot stamped with the journal entry it covers (at most every
        `snapshot_s` unless forced), then merge the entries it covers. A forced save (a traffic
        change) raises StorageError if storage refuses; a periodic one only logs it, since the
        journal already holds everything since the last snapshot."""
        if self.state is None or self.journal is None:
            return
        if not force and self.clock() - self._saved < self.snapshot_s:
            return
        seq = self.journal.seq
        try:
            self.state.write("snapshot.json", json.dumps({**durability.state_of(self), "seq": seq}))
        except StorageError as err:
            if force:
                raise
            logger.warning("snapshot not written (the journal holds what came since): %s", err)
            return
        self._saved = self.clock()
        if self.on_snapshot is not None:
            self.on_snapshot(seq)
        if self.journal.pending >= self.compact_entries:
            try:
                self.journal.compact(durability.entry_weight)  # the snapshot covers every entry
                self.journal.trim(self.max_index)
            except StorageError as err:
                logger.warning("journal not compacted (retried after the next snapshot): %s", err)

    def _restore(self) -> None:
        """Newest snapshot + the journal: entries it covers rebuild the join index only; the
        entries after it are applied as they were the first time."""
        assert self.state is not None and self.journal is not None
        raw = self.state.read("snapshot.json")
        entries = self.journal.load(durability.entry_weight)
        covered = 0
        if raw is not None:
            state = json.loads(raw)
            durability.load_state(self, state)
            covered = int(state["seq"])
        replayed = 0
        for e in entries:
            count = int(e["seq"]) > covered
            replayed += count
            if e["kind"] == "ingest":
                self._apply_ingest(e["rows"], count)
            elif count:
                self._apply_feedback(e["id"], float(e["outcome"]), float(e["ts"]))
            elif e["id"] in self.index:
                self.index[e["id"]]["outcome"] = float(e["outcome"])
        self.journal.seq = max(self.journal.seq, covered)
        self.restored = {"snapshot_seq": covered, "replayed": replayed, "entries": len(entries)}
        if raw is not None or entries:
            logger.info("experiment restored from %s: %s", self.state, self.restored)
        if replayed:
            self.check_guardrails()
            self.save(force=True)

    def storage_report(self) -> dict[str, Any] | None:
        """Where the state is and how far it has been written (GET /ab -> store)."""
        if self.state is None or self.journal is None:
            return None
        return {
            "state_uri": self.state.uri,
            "journal_seq": self.journal.seq,
            "journal_unmerged": self.journal.pending,
            "restored": self.restored,
        }
