"""A version's reference for drift: per feature, the training profile's fixed bins and the
training counts in them (numeric: quantile edges; categorical: the training categories)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Literal

import numpy as np
import pandas as pd

PREDICTION = "__prediction__"  # the model's output, tracked like a numeric feature


@dataclasses.dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: its bins and the training counts in them."""

    name: str
    kind: Literal["numeric", "categorical"]
    counts: np.ndarray  # numeric: len(edges) + 1 bins; categorical: categories + "unseen" (0)
    missing: int
    n: int  # reference rows, missing included
    edges: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    categories: tuple[str, ...] = ()
    low: float = -math.inf  # numeric: the training range
    high: float = math.inf

    @property
    def missing_rate(self) -> float:
        return self.missing / self.n if self.n else 0.0

    def bin_labels(self) -> list[str]:
        if self.kind == "categorical":
            return [*self.categories, "(unseen)"]
        e = [f"{x:.4g}" for x in self.edges]
        if not e:
            return ["all"]
        return [f"< {e[0]}", *[f"[{a}, {b})" for a, b in itertools.pairwise(e)], f">= {e[-1]}"]

    @classmethod
    def from_profile(cls, name: str, d: dict[str, Any]) -> FeatureReference:
        if d["kind"] == "numeric":
            return cls(
                name=name,
                kind="numeric",
                counts=np.asarray(d["counts"], dtype=np.int64),
                missing=int(d.get("missing", 0)),
                n=int(d.get("n", int(np.sum(d["counts"])))),
                edges=np.asarray(d["edges"], dtype=np.float64),
                low=float(d["min"]) if d.get("min") is not None else -math.inf,
                high=float(d["max"]) if d.get("max") is not None else math.inf,
            )
        cats = tuple(str(k) for k in d["counts"])
        return cls(
            name=name,
            kind="categorical",
            counts=np.asarray([*d["counts"].values(), 0], dtype=np.int64),
            missing=int(d.get("missing", 0)),
            n=int(d.get("n", 0)),
            categories=cats,
        )


def profile_of_frame(
    frame: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """A `reference_profile.json`-shaped document of a frame (the same code as training)."""
    from shipyard.bundle.profile import NumericCounts, ProfileAccumulator, quantile_edges

    edges = {c: quantile_edges(frame[c].to_numpy(np.float64)) for c in numeric}
    acc = ProfileAccumulator.create(edges, categorical)
    acc.update(frame)
    cols = acc.to_dict()["columns"]
    profile: dict[str, Any] = {
        "rows": acc.rows,
        "features": {c: cols[c] for c in [*numeric, *categorical]},
    }
    if scores is not None:
        pred = NumericCounts.empty(quantile_edges(scores))
        pred.update(scores)
        profile["prediction"] = pred.to_dict()
    return profile


@dataclasses.dataclass(frozen=True)
class Reference:
    """A version's reference profile (from `reference_profile.json`), ready to bin against."""

    features: dict[str, FeatureReference]
    prediction: FeatureReference | None = None

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> Reference:
        feats = {k: FeatureReference.from_profile(k, v) for k, v in profile["features"].items()}
        pred = profile.get("prediction")
        return cls(feats, FeatureReference.from_profile(PREDICTION, pred) if pred else None)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        numeric: list[str],
        categorical: list[str],
        scores: np.ndarray | None = None,
    ) -> Reference:
        """A reference built the way training builds one (fixed quantile edges, then counts);
        for tests, benchmarks and data that never went through `jobs.train`."""
        return cls.from_profile(profile_of_frame(frame, numeric, categorical, scores))

    def tracked(self) -> dict[str, FeatureReference]:
        """Features and (if profiled) the prediction, in a fixed order."""
        out = dict(self.features)
        if self.prediction is not None:
            out[PREDICTION] = self.prediction
        return out
