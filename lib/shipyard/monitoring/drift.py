"""Drift statistics on fixed-edge counts: live windows against a version's reference profile.

Everything here is pure logic (no Ray): the drift actors in `serving/` wrap `DriftMonitor`.

- A window's state is counts on the reference's own bins (numeric: the training quantile edges;
  categorical: the training categories plus an "unseen" bucket), plus missing, out-of-range and
  type-error counts. Counts merge exactly by addition, so replicas, actors and windows combine.
- Per window and feature: PSI and Jensen-Shannon distance (effect sizes) and a chi-square test of
  homogeneity on the binned counts (reference vs window). The features of a window are one family,
  corrected with Holm (family-wise error) or Benjamini-Hochberg (false discovery rate). A feature's
  distribution drifts only when its corrected p-value is below `alpha` AND its effect size is at
  least its threshold: a big sample makes every trivial shift significant; the effect gate stops it
  from alarming.
- Data quality is drift of its own kind: a missing-rate jump, unseen categories, values outside the
  training range and type errors, each with a rate threshold (and, for the missing rate, a test).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from shipyard.config.drift import DriftSettings

PREDICTION = "__prediction__"  # the model's output, tracked like a numeric feature
EPS = 1e-4  # floor on bin proportions in PSI (an empty bin would make it infinite)
MIN_EXPECTED = 5.0  # chi-square: bins expecting fewer window rows are pooled


# ----------------------------------------------------------------------------- statistics ---


def proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """Population stability index, sum((q - p) * ln(q / p)), on proportions floored at `eps`."""
    p = np.maximum(proportions(np.asarray(reference, dtype=np.float64)), eps)
    q = np.maximum(proportions(np.asarray(current, dtype=np.float64)), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two binned distributions."""
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    # KL terms with 0 * log(0) = 0, base 2 (scipy.spatial.distance.jensenshannon, unrolled)
    kl_p = np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0]))
    kl_q = np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    return float(np.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def pool_sparse_bins(
    reference: np.ndarray, current: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the bins in which the window expects fewer than `min_expected` rows (under the
    reference proportions) into one, so the chi-square approximation holds. Bins empty on both
    sides are dropped. Returns the pooled (reference, current) counts."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return ref, cur
    # Expected window count of each bin under homogeneity (pooled proportions).
    expected = (ref + cur) * n_cur / (n_ref + n_cur)
    small = expected < min_expected
    if not small.any():
        return ref, cur
    ref_out, cur_out, exp_out = ref[~small], cur[~small], expected[~small]
    pooled = np.array([ref[small].sum(), cur[small].sum(), expected[small].sum()])
    if pooled[2] < min_expected and len(ref_out):  # still too small: join the smallest big bin
        j = int(np.argmin(exp_out))
        ref_out, cur_out = ref_out.copy(), cur_out.copy()
        ref_out[j] += pooled[0]
        cur_out[j] += pooled[1]
        return ref_out, cur_out
    return np.append(ref_out, pooled[0]), np.append(cur_out, pooled[1])


def chi2_homogeneity(
    reference: np.ndarray, current: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[float, int, float]:
    """Chi-square test that the window and the reference come from one distribution (a 2 x k
    contingency table of counts, sparse bins pooled). Returns (statistic, dof, p-value)."""
    ref, cur = pool_sparse_bins(reference, current, min_expected)
    if len(ref) < 2 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 0, 1.0
    # Pearson's statistic of the 2 x k table, computed directly: scipy's chi2_contingency gives
    # the same numbers (the unit tests check it) at several times the cost per call, and a drift
    # actor judges every feature of every window.
    table = np.vstack([ref, cur]).astype(np.float64)
    keep = table.sum(axis=0) > 0
    table = table[:, keep]
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return stat, dof, float(special.chdtrc(dof, stat))


def proportion_increase_p(x_ref: int, n_ref: int, x_cur: int, n_cur: int) -> float:
    """One-sided p-value that the window's rate x_cur/n_cur is above the reference's (pooled
    two-proportion z-test)."""
    if n_ref == 0 or n_cur == 0:
        return 1.0
    p_pool = (x_ref + x_cur) / (n_ref + n_cur)
    se = math.sqrt(p_pool * (1 - p_pool) * (1 / n_ref + 1 / n_cur))
    if se == 0:
        return 1.0 if x_cur / n_cur <= x_ref / n_ref else 0.0
    z = (x_cur / n_cur - x_ref / n_ref) / se
    return float(stats.norm.sf(z))


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (controls the false discovery rate)."""
    if not pvalues:
        return []
    return [float(x) for x in stats.false_discovery_control(np.asarray(pvalues), method="bh")]


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


# ------------------------------------------------------------------------------ reference ---


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


# ----------------------------------------------------------------------------- counts ---


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


# ----------------------------------------------------------------------------- verdicts ---


def judge_window(
    reference: Reference, window: WindowCounts, settings: DriftSettings
) -> dict[str, Any]:
    """One closed window -> a verdict per tracked feature and overall.

    Distribution: chi-square p-values of the input features form one family (corrected with
    `settings.correction`); the prediction is judged on its own (output drift). Quality: rates
    against thresholds (missing: also a one-sided test at `alpha`)."""
    tracked = reference.tracked()
    out: dict[str, dict[str, Any]] = {}
    pvals: dict[str, float] = {}
    for name, ref in tracked.items():
        cur = window.features[name]
        present = int(cur.counts.sum())
        stat, dof, p = chi2_homogeneity(ref.counts, cur.counts)
        effect = {"psi": psi(ref.counts, cur.counts), "js": js_distance(ref.counts, cur.counts)}
        if present == 0:
            effect = {"psi": 0.0, "js": 0.0}
        seen = cur.n + cur.type_errors
        quality: dict[str, Any] = {
            "missing_rate": cur.missing / cur.n if cur.n else 0.0,
            "reference_missing_rate": ref.missing_rate,
            "type_error_rate": cur.type_errors / seen if seen else 0.0,
        }
        flags = []
        jump = quality["missing_rate"] - ref.missing_rate >= settings.missing_rate_increase
        if (
            cur.n
            and jump
            and (proportion_increase_p(ref.missing, ref.n, cur.missing, cur.n) < settings.alpha)
        ):
            flags.append("missing_rate")
        if quality["type_error_rate"] >= settings.type_error_rate and cur.type_errors:
            flags.append("type_errors")
        if ref.kind == "categorical":
            quality["unseen_rate"] = int(cur.counts[-1]) / present if present else 0.0
            if quality["unseen_rate"] >= settings.unseen_rate:
                flags.append("unseen_categories")
        else:
            quality["out_of_range_rate"] = cur.out_of_range / present if present else 0.0
            if name != PREDICTION and quality["out_of_range_rate"] >= settings.out_of_range_rate:
                flags.append("out_of_range")
        out[name] = {
            "kind": ref.kind,
            "rows": cur.n,
            "psi": effect["psi"],
            "js": effect["js"],
            "chi2": stat,
            "dof": dof,
            "p_value": p,
            "quality": quality,
            "quality_flags": flags,
        }
        if name != PREDICTION:
            pvals[name] = p
    names = list(pvals)
    adjusted = dict(
        zip(names, CORRECTIONS[settings.correction]([pvals[k] for k in names]), strict=True)
    )
    if PREDICTION in out:
        adjusted[PREDICTION] = out[PREDICTION]["p_value"]
    threshold = settings.psi_threshold if settings.effect == "psi" else settings.js_threshold
    for name, r in out.items():
        r["p_adjusted"] = adjusted[name]
        r["significant"] = adjusted[name] < settings.alpha
        r["effect_exceeded"] = r[settings.effect] >= threshold
        r["distribution_drift"] = bool(r["significant"] and r["effect_exceeded"])
        r["drifted"] = bool(r["distribution_drift"] or r["quality_flags"])
    features = {k: v for k, v in out.items() if k != PREDICTION}
    return {
        "rows": window.rows,
        "started_at": window.started_at,
        "ended_at": window.updated_at,
        "features": features,
        "prediction": out.get(PREDICTION),
        "drifted_features": sorted(k for k, v in features.items() if v["drifted"]),
        "prediction_drifted": bool(out.get(PREDICTION, {}).get("drifted", False)),
        "drifted": any(v["drifted"] for v in out.values()),
        "settings": {"correction": settings.correction, "alpha": settings.alpha,
                     "effect": settings.effect, "effect_threshold": threshold},
    }  # fmt: skip


class DriftMonitor:
    """Windows over a stream of batches for one version, the verdict of each closed window, and
    which features are in a drift episode (and since when). Pure logic; the drift actor wraps it
    and checkpoints `state()`.

    `add` and `tick` return the events to raise: `drift_started` when a feature enters a drift
    episode, `drift_resolved` when all of a variant's drifted features have been clean for
    `settings.resolve_after` windows in a row."""

    def __init__(self, reference: Reference, settings: DriftSettings | None = None) -> None:
        self.reference = reference
        self.settings = settings or DriftSettings()
        self.binner = Binner(reference)
        self.window = WindowCounts.empty(reference)
        self.last: dict[str, Any] | None = None  # verdict of the last closed window
        self.last_window: WindowCounts | None = None
        self.windows = 0
        self.episodes: dict[str, dict[str, Any]] = {}  # feature -> {"since", "clean"}
        self.total_rows = 0

    # -- feeding --
    def add(
        self,
        feed: dict[str, np.ndarray],
        scores: Any = None,
        type_errors: dict[str, int] | None = None,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        t = time.time() if now is None else now
        if self.window.rows == 0 and not any(c.type_errors for c in self.window.features.values()):
            self.window.started_at = t
        self.window.add(self.binner, feed, scores)
        if type_errors:
            self.window.add_type_errors(type_errors)
        self.window.updated_at = t
        self.total_rows += len(next(iter(feed.values()))) if feed else 0
        if self.window.rows >= self.settings.window_rows:
            return self._close(t)
        return []

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Close the window by time (if it is old enough and holds enough rows)."""
        t = time.time() if now is None else now
        old = t - self.window.started_at >= self.settings.window_seconds
        if old and self.window.rows >= self.settings.min_rows:
            return self._close(t)
        return []

    def _close(self, now: float) -> list[dict[str, Any]]:
        self.window.updated_at = now
        verdict = judge_window(self.reference, self.window, self.settings)
        self.windows += 1
        verdict["window"] = self.windows
        events = self._episodes(verdict, now)
        self.last, self.last_window = verdict, self.window
        self.window = WindowCounts.empty(self.reference, now)
        return events

    def _episodes(self, verdict: dict[str, Any], now: float) -> list[dict[str, Any]]:
        drifted = set(verdict["drifted_features"])
        if verdict["prediction_drifted"]:
            drifted.add(PREDICTION)
        started = sorted(drifted - set(self.episodes))
        for name in started:
            self.episodes[name] = {"since": verdict["started_at"], "clean": 0}
        for name, ep in self.episodes.items():
            ep["clean"] = 0 if name in drifted else ep["clean"] + 1
        resolved = sorted(
            k for k, ep in self.episodes.items() if ep["clean"] >= self.settings.resolve_after
        )
        was_drifting = bool(set(self.episodes) - set(started))
        for name in resolved:
            del self.episodes[name]
        events: list[dict[str, Any]] = []
        if started:
            events.append(
                {"kind": "drift_started", "features": started, "window": verdict["window"],
                 "scores": {k: _score(verdict, k) for k in started}}
            )  # fmt: skip
        if resolved and not self.episodes and (was_drifting or not started):
            events.append(
                {"kind": "drift_resolved", "features": resolved, "window": verdict["window"]}
            )
        return events

    # -- reading --
    def status(self) -> dict[str, Any]:
        """What `GET /drift` shows for this version: the last closed window's verdict per
        feature, plus `since` for features in a drift episode, and the open window's size."""
        last = self.last
        feats: dict[str, Any] = {}
        if last is not None:
            for name, r in {**last["features"], PREDICTION: last["prediction"]}.items():
                if r is None:
                    continue
                feats[name] = {
                    "score": r[self.settings.effect],
                    "psi": r["psi"],
                    "js": r["js"],
                    "p_value": r["p_value"],
                    "p_adjusted": r["p_adjusted"],
                    "drifted": r["drifted"],
                    "distribution_drift": r["distribution_drift"],
                    "quality_flags": r["quality_flags"],
                    "quality": r["quality"],
                    "window_rows": r["rows"],
                    "since": self.episodes.get(name, {}).get("since"),
                }
        return {
            "drifted": bool(self.episodes),
            "drifting": sorted(self.episodes),
            "windows": self.windows,
            "rows": self.total_rows,
            "last_window": None
            if last is None
            else {
                "window": last["window"],
                "rows": last["rows"],
                "started_at": last["started_at"],
                "ended_at": last["ended_at"],
            },
            "open_window_rows": self.window.rows,
            "features": feats,
            "settings": self.settings.model_dump(),
        }

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-serialisable)."""
        return {
            "version": 1,
            "window": self.window.to_dict(),
            "last": self.last,
            "last_window": self.last_window.to_dict() if self.last_window else None,
            "windows": self.windows,
            "episodes": self.episodes,
            "total_rows": self.total_rows,
        }

    def restore(self, state: dict[str, Any]) -> None:
        window = WindowCounts.from_dict(state["window"])
        if set(window.features) != set(self.window.features) or any(
            len(window.features[k].counts) != len(c.counts) for k, c in self.window.features.items()
        ):
            raise ValueError("drift state was saved against a different reference profile")
        self.window = window
        self.last = state.get("last")
        lw = state.get("last_window")
        self.last_window = WindowCounts.from_dict(lw) if lw else None
        self.windows = int(state.get("windows", 0))
        self.episodes = dict(state.get("episodes", {}))
        self.total_rows = int(state.get("total_rows", 0))


def _score(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    r = verdict["prediction"] if name == PREDICTION else verdict["features"][name]
    return {"psi": r["psi"], "p_adjusted": r["p_adjusted"], "flags": r["quality_flags"],
            "distribution": r["distribution_drift"]}  # fmt: skip
