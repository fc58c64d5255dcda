"""What makes the experiment durable: its journal and its snapshot in one state folder.

Every batch of request records and every feedback is appended to the journal before the
experiment applies it. A snapshot (the split, the statistics, the pending feedback), stamped with
the journal entry it covers, is written at most every `snapshot_s`, or at once when forced (a
traffic change); the entries it covers are merged once there are `compact_entries`, keeping as
many requests as the join index. A forced snapshot that storage refuses raises StorageError (the
change is undone); a periodic one only logs it, since the journal holds everything since the last.
What a snapshot holds is `state_of` / `load_state`; which entries to replay is the experiment's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from shipyard.ab.routing import Allocation
from shipyard.ab.state import ExperimentState
from shipyard.errors import StorageError
from shipyard.storage import Journal, StateDir

logger = logging.getLogger(__name__)

STATE_FORMAT = 3  # 3: a snapshot names the journal entry it covers; pending feedback kept


def state_of(exp: ExperimentState) -> dict[str, Any]:
    """The snapshot's contents (JSON-ready)."""
    return {
        "format": STATE_FORMAT,
        "identity": exp.identity,
        "weights": exp.weights,
        "shadow": exp.shadow,
        "control": exp.control,
        "deploy_hash": exp.deploy_hash,
        "allocation": exp.allocation.to_json(),
        "epoch": exp.epoch,
        "epoch_started": exp.epoch_started,
        "config_version": exp.config_version,
        "rolled_back": exp.rolled_back,
        "msprt": exp.msprt,
        "stats": {n: s.to_json() for n, s in exp.stats.items()},
        "shadows": {n: s.to_json() for n, s in exp.shadows.items()},
        "pending": {k: list(v) for k, v in exp.joins.pending.items()},
        "feedback_unmatched": exp.joins.unmatched,
        "feedback_dropped": exp.joins.dropped,
        "feedback_not_counted": exp.joins.not_counted,
        "started": exp.started,
    }


def load_state(exp: ExperimentState, state: dict[str, Any]) -> None:
    """Put a snapshot's contents back (variants no longer in the app are left out)."""
    exp.weights = state["weights"]
    exp.shadow = state["shadow"]
    exp.control = state["control"]
    exp.deploy_hash = state["deploy_hash"]
    exp.allocation = Allocation.from_json(state["allocation"])
    exp.epoch = state["epoch"]
    exp.epoch_started = state["epoch_started"]
    exp.config_version = state["config_version"]
    exp.rolled_back = state["rolled_back"]
    exp.msprt = state["msprt"]
    exp.started = state["started"]
    exp.joins.pending = {k: (float(v[0]), float(v[1])) for k, v in state["pending"].items()}
    exp.joins.unmatched = int(state["feedback_unmatched"])
    exp.joins.dropped = int(state["feedback_dropped"])
    exp.joins.not_counted = int(state.get("feedback_not_counted", 0))
    for n, d in state["stats"].items():
        if n in exp.stats:
            exp.stats[n].load(d)
    for n, d in state["shadows"].items():
        if n in exp.shadows:
            exp.shadows[n].load(d)


def entry_weight(entry: dict[str, Any]) -> int:
    """How many requests a journal entry holds (the journal keeps as many as the index)."""
    return len(entry.get("rows", ())) or 1


class Durable:
    """The journal and the snapshot of one experiment's state folder."""

    def __init__(
        self,
        state: StateDir,
        *,
        clock: Callable[[], float],
        snapshot_s: float,
        compact_entries: int,
        keep: int,
        on_snapshot: Callable[[int], None] | None = None,
    ) -> None:
        """`keep`: requests the merged journal keeps (the join index's size); `on_snapshot(seq)`
        is told the journal position of every snapshot written."""
        self.state = state
        self.journal = Journal(state.child("journal"))
        self.clock = clock
        self.snapshot_s = snapshot_s
        self.compact_entries = compact_entries
        self.keep = keep
        self.on_snapshot = on_snapshot
        self.saved = 0.0  # when the last snapshot was written
        self.restored: dict[str, int] | None = None  # what the last restart found

    def append(self, entry: dict[str, Any]) -> None:
        """Journal an entry before it is applied (StorageError: not stored, not to be applied)."""
        self.journal.append(entry)

    def save(self, contents: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Write the snapshot `contents()` stamped with the journal entry it covers, then merge
        the entries it covers."""
        if not force and self.clock() - self.saved < self.snapshot_s:
            return
        seq = self.journal.seq
        try:
            self.state.write("snapshot.json", json.dumps({**contents(), "seq": seq}))
        except StorageError as err:
            if force:
                raise
            logger.warning("snapshot not written (the journal holds what came since): %s", err)
            return
        self.saved = self.clock()
        if self.on_snapshot is not None:
            self.on_snapshot(seq)
        if self.journal.pending >= self.compact_entries:
            try:
                self.journal.compact(entry_weight)  # the snapshot covers every entry
                self.journal.trim(self.keep)
            except StorageError as err:
                logger.warning("journal not compacted (retried after the next snapshot): %s", err)

    def load(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The newest snapshot (None: none written) and every journal entry kept, oldest first;
        an entry whose `seq` is above the snapshot's came after it."""
        raw = self.state.read("snapshot.json")
        return (json.loads(raw) if raw is not None else None), self.journal.load(entry_weight)

    def resumed(self, snapshot: dict[str, Any] | None, replayed: int, entries: int) -> None:
        """Record what a restart found; new entries are numbered after the snapshot's."""
        covered = int(snapshot["seq"]) if snapshot is not None else 0
        self.journal.seq = max(self.journal.seq, covered)
        self.restored = {"snapshot_seq": covered, "replayed": replayed, "entries": entries}
        if snapshot is not None or entries:
            logger.info("experiment restored from %s: %s", self.state, self.restored)

    def report(self) -> dict[str, Any]:
        """Where the state is and how far it has been written (GET /ab -> store)."""
        return {
            "state_uri": self.state.uri,
            "journal_seq": self.journal.seq,
            "journal_unmerged": self.journal.pending,
            "restored": self.restored,
        }
