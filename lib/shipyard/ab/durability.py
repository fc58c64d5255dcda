"""What makes the experiment durable: its snapshot (the split, the statistics, the pending
feedback, stamped by the experiment with the journal entry it covers) written and read back, and
how many requests a journal entry holds. When to journal, snapshot and replay is the
experiment's (`Experiment.save`, `Experiment._restore`)."""

from __future__ import annotations

from typing import Any

from shipyard.ab.routing import Allocation
from shipyard.ab.state import ExperimentState

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
        "pending": {k: list(v) for k, v in exp.pending.items()},
        "feedback_unmatched": exp.feedback_unmatched,
        "feedback_dropped": exp.feedback_dropped,
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
    exp.pending = {k: (float(v[0]), float(v[1])) for k, v in state["pending"].items()}
    exp.feedback_unmatched = int(state["feedback_unmatched"])
    exp.feedback_dropped = int(state["feedback_dropped"])
    for n, d in state["stats"].items():
        if n in exp.stats:
            exp.stats[n].load(d)
    for n, d in state["shadows"].items():
        if n in exp.shadows:
            exp.shadows[n].load(d)


def entry_weight(entry: dict[str, Any]) -> int:
    """How many requests a journal entry holds (the journal keeps as many as the index)."""
    return len(entry.get("rows", ())) or 1
