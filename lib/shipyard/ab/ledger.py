"""The experiment's ledger: what it counts per variant (requests, errors, latencies,
predictions, outcomes by key) and per shadow, and what its join index keeps of an answered
request. Counting is here; when to count (ingest, de-duplication, the feedback join, the journal)
is the experiment's (`shipyard.ab.experiment`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shipyard.ab import statistics as abstats
from shipyard.ab.statistics import KeyedOutcomes, Moments

LATENCY_WINDOW = 20_000


class Ring:
    """The last `size` values (latencies), for percentiles."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self.buf = np.empty(size, dtype=np.float64)
        self.n = 0

    def add(self, v: float) -> None:
        self.buf[self.n % len(self.buf)] = v
        self.n += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.n, len(self.buf))]


class VariantStats:
    def __init__(self) -> None:
        self.requests = 0  # served (any status), including explicitly targeted ones
        self.errors = 0  # server-side failures (5xx)
        self.rejected = 0  # client errors (4xx)
        self.explicit = 0  # targeted with X-Shipyard-Variant: left out of A/B statistics
        self.input_failures = 0  # failed here and on control: the input's doing, not counted
        self.rerouted = 0  # the variant had not loaded: control answered its keys
        self.predictions = Moments()
        self.outcomes = Moments()  # joined feedback of A/B-eligible requests
        self.keyed = KeyedOutcomes()  # the same outcomes by unit of randomisation (key)
        self.new_epoch()

    def new_epoch(self) -> None:
        """Counters that restart whenever the split changes (SRM, guardrails, latency)."""
        self.units = 0  # assignment units: distinct keys, or requests without a key
        self.keys: set[str] = set()
        self.epoch_requests = 0
        self.epoch_errors = 0
        self.latency = Ring()

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "explicit": self.explicit,
            "input_failures": self.input_failures,
            "rerouted": self.rerouted,
            "predictions": self.predictions.to_json(),
            "outcomes": self.outcomes.to_json(),
            "keyed": self.keyed.to_json(),
        }

    def load(self, d: dict[str, Any]) -> None:
        for k in ("requests", "errors", "rejected", "explicit", "input_failures", "rerouted"):
            setattr(self, k, int(d.get(k, 0)))
        self.predictions = Moments.from_json(d["predictions"])
        self.outcomes = Moments.from_json(d["outcomes"])
        self.keyed = KeyedOutcomes.from_json(d["keyed"])

    def count(self, r: dict[str, Any]) -> None:
        """Count one answered request (a router's record) in this variant's statistics."""
        self.requests += 1
        status = int(r.get("status", 200))
        if 400 <= status < 500:
            self.rejected += 1
            return
        if r.get("blame") == "input":  # control failed on the same records
            self.input_failures += 1
            return
        ab = bool(r.get("ab", True))
        if not ab:
            self.explicit += 1
        else:
            self.epoch_requests += 1
            if status >= 500:
                self.errors += 1
                self.epoch_errors += 1
            key = r.get("key")
            if key is None or key not in self.keys:
                self.units += 1
                if key is not None:
                    self.keys.add(key)
            # Latency guardrail: answered one-record requests only, so that large batches
            # aimed at a treatment's keys cannot make it look slow.
            if status < 400 and r.get("n", 1) == 1 and r.get("latency_ms") is not None:
                self.latency.add(float(r["latency_ms"]))
        if r.get("rerouted"):  # counted for SRM (the key was assigned here), not joinable
            self.rerouted += 1
            return
        pred = r.get("pred")
        if status < 400 and ab and pred is not None and math.isfinite(pred):
            self.predictions.push(pred)


class ShadowStats:
    def __init__(self) -> None:
        self.mirrored = 0
        self.errors = 0
        self.dropped = 0  # not sent: too many shadow calls already in flight
        self.agree = 0
        self.compared = 0
        self.abs_diff = Moments()
        self.latency = Ring()

    def to_json(self) -> dict[str, Any]:
        keys = ("mirrored", "errors", "dropped", "agree", "compared")
        return {**{k: getattr(self, k) for k in keys}, "abs_diff": self.abs_diff.to_json()}

    def load(self, d: dict[str, Any]) -> None:
        for k in ("mirrored", "errors", "dropped", "agree", "compared"):
            setattr(self, k, int(d.get(k, 0)))
        self.abs_diff = Moments.from_json(d["abs_diff"])

    def report(self) -> dict[str, Any]:
        return {
            "mirrored": self.mirrored,
            "errors": self.errors,
            "dropped": self.dropped,
            "agreement_rate": self.agree / self.compared if self.compared else None,
            "mean_abs_diff": self.abs_diff.mean if self.abs_diff.n else None,
            "latency_ms": abstats.percentiles(self.latency.values()),
        }

    def count(self, r: dict[str, Any]) -> None:
        """Count one mirrored request (a router's shadow record)."""
        if r.get("dropped"):
            self.dropped += 1
            return
        self.mirrored += 1
        if not r.get("ok", True):
            self.errors += 1
            return
        self.latency.add(float(r["latency_ms"]))
        if r.get("agree") is not None:
            self.compared += 1
            self.agree += int(bool(r["agree"]))
        if r.get("abs_diff") is not None:
            self.abs_diff.push(float(r["abs_diff"]))


def index_entry(r: dict[str, Any]) -> dict[str, Any]:
    """What the index keeps of an answered request (from the router, or from the request log)."""
    return {
        "variant": r["variant"],
        "version": r.get("version"),
        "pred": r.get("pred"),
        "ab": bool(r.get("ab", True)),
        "key": r.get("key"),
        "ts": r.get("ts"),
    }


def joinable(r: dict[str, Any]) -> bool:
    """An answered request whose outcome can be joined: served by its own variant."""
    return int(r.get("status", 200)) < 400 and r.get("blame") != "input" and not r.get("rerouted")
