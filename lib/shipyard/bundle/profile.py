"""Reference profile of a table: fixed-edge histograms, category counts and missing rates.

Counts are kept on fixed bin edges (from reference quantiles), so partial profiles computed on
different blocks, replicas or time windows merge exactly by addition. Training writes the
reference profile from the training split; the drift actors compare live windows against it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from shipyard.bundle.schema import InputSchema, category_strings

PROFILE_VERSION = 1


def quantile_edges(values: np.ndarray, n_bins: int = 10) -> list[float]:
    """Interior bin edges at the reference quantiles (duplicates removed): n_bins bins at most."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return []
    qs = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [float(x) for x in np.unique(qs)]


@dataclasses.dataclass
class NumericCounts:
    edges: list[float]
    counts: np.ndarray  # len(edges) + 1 bins: (-inf, e0), [e0, e1), ..., [e_last, inf)
    missing: int = 0
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")

    @classmethod
    def empty(cls, edges: list[float]) -> NumericCounts:
        return cls(list(edges), np.zeros(len(edges) + 1, dtype=np.int64))

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        self.missing += int((~ok).sum())
        x = v[ok]
        self.n += len(v)
        if x.size:
            self.counts += np.bincount(
                np.searchsorted(self.edges, x, side="right"), minlength=len(self.counts)
            )
            self.total += float(x.sum())
            self.total_sq += float((x * x).sum())
            self.min = min(self.min, float(x.min()))
            self.max = max(self.max, float(x.max()))

    def merge(self, other: NumericCounts) -> None:
        if self.edges != other.edges:
            raise ValueError("cannot merge numeric counts with different bin edges")
        self.counts = self.counts + other.counts
        self.missing += other.missing
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def to_dict(self) -> dict[str, Any]:
        present = int(self.counts.sum())
        mean = self.total / present if present else None
        var = self.total_sq / present - mean * mean if present and mean is not None else None
        return {
            "kind": "numeric",
            "edges": self.edges,
            "counts": self.counts.tolist(),
            "proportions": (self.counts / present).tolist() if present else [],
            "missing": self.missing,
            "missing_rate": self.missing / self.n if self.n else 0.0,
            "n": self.n,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "mean": mean,
            "std": float(np.sqrt(max(var, 0.0))) if var is not None else None,
            "min": self.min if present else None,
            "max": self.max if present else None,
        }


@dataclasses.dataclass
class CategoricalCounts:
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    missing: int = 0
    n: int = 0

    def update(self, values: pd.Series) -> None:
        s = category_strings(values)
        self.n += len(s)
        vc = pd.Series(s).value_counts()
        for k, c in vc.items():
            if k == "":
                self.missing += int(c)
            else:
                self.counts[str(k)] = self.counts.get(str(k), 0) + int(c)

    def merge(self, other: CategoricalCounts) -> None:
        for k, c in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + c
        self.missing += other.missing
        self.n += other.n

    def top(self, k: int) -> list[str]:
        """The k most frequent categories, ties broken by name for determinism."""
        return [c for c, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]

    def to_dict(self) -> dict[str, Any]:
        present = sum(self.counts.values())
        ordered = dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return {
            "kind": "categorical",
            "counts": ordered,
            "frequencies": {k: v / present for k, v in ordered.items()} if present else {},
            "missing": self.missing,
            "missing_rate": self.missing / self.n if self.n else 0.0,
            "n": self.n,
        }


@dataclasses.dataclass
class ProfileAccumulator:
    """Counts for every column of a table; `update` per batch, `merge` across batches."""

    numeric: dict[str, NumericCounts]
    categorical: dict[str, CategoricalCounts]
    rows: int = 0

    @classmethod
    def create(cls, edges: dict[str, list[float]], categorical: list[str]) -> ProfileAccumulator:
        return cls(
            {c: NumericCounts.empty(e) for c, e in edges.items()},
            {c: CategoricalCounts() for c in categorical},
        )

    def update(self, df: pd.DataFrame) -> None:
        self.rows += len(df)
        for c, acc in self.numeric.items():
            acc.update(pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64, na_value=np.nan))
        for c, cat in self.categorical.items():
            cat.update(df[c])

    def merge(self, other: ProfileAccumulator) -> None:
        self.rows += other.rows
        for c, acc in self.numeric.items():
            acc.merge(other.numeric[c])
        for c, cat in self.categorical.items():
            cat.merge(other.categorical[c])

    def to_dict(self) -> dict[str, Any]:
        cols: dict[str, Any] = {c: a.to_dict() for c, a in self.numeric.items()}
        cols.update({c: a.to_dict() for c, a in self.categorical.items()})
        return {"rows": self.rows, "columns": cols}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileAccumulator:
        num: dict[str, NumericCounts] = {}
        cat: dict[str, CategoricalCounts] = {}
        for c, v in d["columns"].items():
            if v["kind"] == "numeric":
                num[c] = NumericCounts(
                    edges=list(v["edges"]),
                    counts=np.asarray(v["counts"], dtype=np.int64),
                    missing=v["missing"],
                    n=v["n"],
                    total=v["sum"],
                    total_sq=v["sum_sq"],
                    min=v["min"] if v["min"] is not None else float("inf"),
                    max=v["max"] if v["max"] is not None else float("-inf"),
                )
            else:
                cat[c] = CategoricalCounts(dict(v["counts"]), v["missing"], v["n"])
        return cls(num, cat, d["rows"])


def reference_profile(
    acc: ProfileAccumulator,
    schema: InputSchema,
    predictions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document stored with a model version (features only, plus predictions)."""
    cols = acc.to_dict()["columns"]
    return {
        "profile_version": PROFILE_VERSION,
        "rows": acc.rows,
        "features": {f.name: cols[f.name] for f in schema.features},
        "target": cols.get(schema.target),
        "prediction": predictions,
    }
