"""Verdicts: a closed window judged against the reference (distribution and quality, one family
corrected together), and `DriftMonitor`, which cuts windows and tracks drift episodes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from shipyard.config.drift import DriftSettings
from shipyard.monitoring.drift.counts import Binner, WindowCounts
from shipyard.monitoring.drift.reference import PREDICTION, Reference
from shipyard.monitoring.drift.statistics import (
    chi2_homogeneity,
    js_distance,
    proportion_increase_p,
    psi,
)
from shipyard.multiplicity import adjust


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
    adjusted = dict(zip(names, adjust([pvals[k] for k in names], settings.correction), strict=True))
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
