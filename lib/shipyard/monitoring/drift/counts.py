"""A window's counts on its reference's bins: per feature, the binned values and the missing,
out-of-range, unseen and type-error counts. Counts merge exactly by addition, so replicas,
actors and windows combine."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pandas as pd

from shipyard.monitoring.drift.reference import PREDICTION, FeatureReference, Reference


@dataclasses.dataclass
class FeatureCounts:
    """A window's counts for one feature, on its reference's bins. Merges by addition."""

    counts: np.ndarray
    missing: int = 0
    out_of_range: int = 0
    type_errors: int = 0
    n: int = 0  # rows seen, missing included (type errors are not rows the model saw)

    @classmethod
    def empty(cls, ref: FeatureReference) -> FeatureCounts:
        return cls(np.zeros(len(ref.counts), dtype=np.int64))

    def merge(self, other: FeatureCounts) -> None:
        if len(self.counts) != len(other.counts):
            raise ValueError("cannot merge counts on different bins")
        self.counts = self.counts + other.counts
        self.missing += other.missing
        self.out_of_range += other.out_of_range
        self.type_errors += other.type_errors
        self.n += other.n

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "out_of_range": self.out_of_range,
            "type_errors": self.type_errors,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureCounts:
        return cls(
            np.asarray(d["counts"], dtype=np.int64),
            int(d["missing"]),
            int(d["out_of_range"]),
            int(d["type_errors"]),
            int(d["n"]),
        )


MISSING_CODE = -1


class Binner:
    """Bins raw columns on a reference's bins, vectorised (the drift actor's hot path)."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        self.tracked = reference.tracked()
        self._cat_lookup: dict[str, dict[Any, int]] = {
            k: {**{c: i for i, c in enumerate(r.categories)}, "": MISSING_CODE, None: MISSING_CODE}
            for k, r in self.tracked.items()
            if r.kind == "categorical"
        }
        # Numeric values reach the model (and this binner) as float32: compare in float32, or a
        # value equal to an edge (common: edges are data quantiles) can fall into the bin below.
        self._edges32 = {
            k: (r.edges.astype(np.float32), np.float32(r.low), np.float32(r.high))
            for k, r in self.tracked.items()
            if r.kind == "numeric"
        }

    def count(self, name: str, values: np.ndarray) -> FeatureCounts:
        ref = self.tracked[name]
        v = np.asarray(values).reshape(-1)
        out = FeatureCounts.empty(ref)
        out.n = len(v)
        if ref.kind == "numeric":
            edges, low, high = self._edges32[name]
            x = v.astype(np.float32, copy=False)
            ok = np.isfinite(x)
            out.missing = int(len(x) - ok.sum())
            x = x[ok]
            if x.size:
                idx = np.searchsorted(edges, x, side="right")
                out.counts = np.bincount(idx, minlength=len(ref.counts)).astype(np.int64)
                out.out_of_range = int(((x < low) | (x > high)).sum())
            return out
        # A dict lookup per value: a few categories, so this beats building a pandas Index
        # (which, under pandas 3, converts every batch to an arrow string array first).
        lookup, unseen = self._cat_lookup[name], len(ref.categories)
        codes = np.fromiter((lookup.get(x, unseen) for x in v), dtype=np.intp, count=len(v))
        odd = np.flatnonzero(codes == unseen)
        if odd.size:  # NaN / pd.NA are missing, not unseen (they never equal a dict key)
            codes[odd[pd.isna(v[odd])]] = MISSING_CODE
        present = codes[codes != MISSING_CODE]
        out.missing = len(v) - len(present)
        out.counts = np.bincount(present, minlength=len(ref.counts)).astype(np.int64)
        return out


@dataclasses.dataclass
class WindowCounts:
    """Everything one window has seen: counts per tracked feature, rows, start and end."""

    features: dict[str, FeatureCounts]
    rows: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def empty(cls, reference: Reference, now: float | None = None) -> WindowCounts:
        t = time.time() if now is None else now
        feats = {k: FeatureCounts.empty(r) for k, r in reference.tracked().items()}
        return cls(feats, 0, t, t)

    def add(self, binner: Binner, feed: dict[str, np.ndarray], scores: Any = None) -> None:
        """Add a batch: raw feature columns (as the model got them) and the model's scores."""
        n = len(next(iter(feed.values()))) if feed else 0
        for name in binner.reference.features:
            if name in feed:
                self.features[name].merge(binner.count(name, feed[name]))
        if scores is not None and PREDICTION in self.features:
            self.features[PREDICTION].merge(binner.count(PREDICTION, np.asarray(scores)))
        self.rows += n

    def add_type_errors(self, errors: dict[str, int]) -> None:
        for name, k in errors.items():
            if name in self.features:
                self.features[name].type_errors += int(k)

    def merge(self, other: WindowCounts) -> None:
        for k, c in other.features.items():
            self.features[k].merge(c)
        self.rows += other.rows
        self.started_at = min(self.started_at, other.started_at)
        self.updated_at = max(self.updated_at, other.updated_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "features": {k: c.to_dict() for k, c in self.features.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowCounts:
        feats = {k: FeatureCounts.from_dict(v) for k, v in d["features"].items()}
        return cls(feats, int(d["rows"]), float(d["started_at"]), float(d["updated_at"]))
