"""Holdout evaluation: overall metrics per task, calibration, slices and the promotion gates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

# Primary metric per task and whether higher is better.
PRIMARY: dict[str, tuple[str, bool]] = {
    "binary": ("auc", True),
    "multiclass": ("macro_f1", True),
    "regression": ("rmse", False),
}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean |observed rate - mean predicted probability| over equal-width bins, by weight."""
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs(float(y[m].mean()) - float(p[m].mean()))
    return total / len(y) if len(y) else float("nan")


def task_metrics(task: str, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Metrics of one prediction set. `out`: P(positive) for binary, [N, K] probabilities for
    multiclass, predicted values for regression. `y`: class index or target value."""
    if len(y) == 0:
        return {}
    if task == "binary":
        p = np.clip(out, 1e-15, 1 - 1e-15)
        res = {
            "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
            "accuracy": float(skm.accuracy_score(y, p >= 0.5)),
            "f1": float(skm.f1_score(y, p >= 0.5, zero_division=0)),
            "calibration_error": float(expected_calibration_error(y, p)),
        }
        res["auc"] = float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan
        return res
    if task == "multiclass":
        k = out.shape[1]
        pred = out.argmax(axis=1)
        return {
            "accuracy": float(skm.accuracy_score(y, pred)),
            # Over the classes present (truth or prediction): a slice holding one class that is
            # predicted perfectly scores 1.0, not 1/K.
            "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
            "log_loss": float(skm.log_loss(y, np.clip(out, 1e-15, 1), labels=list(range(k)))),
        }
    if task == "regression":
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y, out))),
            "mae": float(skm.mean_absolute_error(y, out)),
            "r2": float(skm.r2_score(y, out)) if len(y) > 1 else math.nan,
        }
    raise ValueError(f"unknown task {task!r}")


def slice_metrics(
    task: str,
    frame: pd.DataFrame,
    y: np.ndarray,
    out: np.ndarray,
    columns: list[str],
    min_rows: int,
) -> list[dict[str, Any]]:
    """Primary metric per value of each categorical column (missing values form a slice too)."""
    name, _ = PRIMARY[task]
    rows = []
    for col in columns:
        values = frame[col].astype("string").fillna("<missing>").to_numpy(dtype=object)
        for value in pd.unique(values):
            m = values == value
            n = int(m.sum())
            metric = task_metrics(task, y[m], out[m]).get(name, math.nan) if n else math.nan
            rows.append(
                {
                    "feature": col,
                    "value": str(value),
                    "rows": n,
                    name: metric,
                    "gated": n >= min_rows,
                }
            )
    return rows


def worst_slice(task: str, slices: list[dict[str, Any]], overall: float) -> dict[str, Any] | None:
    """The gated slice furthest behind the overall primary metric, with its gap (>= 0 is worse)."""
    name, higher = PRIMARY[task]
    worst: dict[str, Any] | None = None
    for s in slices:
        v = s[name]
        if not s["gated"] or v is None or math.isnan(v):
            continue
        gap = (overall - v) if higher else (v - overall)
        if worst is None or gap > worst["gap"]:
            worst = {**s, "gap": float(gap)}
    return worst


def lift(task: str, candidate: float, reference: float) -> float:
    """How much better the candidate is than the reference in the primary metric (> 0: better)."""
    _, higher = PRIMARY[task]
    return candidate - reference if higher else reference - candidate


def check_gates(
    task: str,
    gates: Any,
    metrics: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None,
    worst: dict[str, Any] | None,
    latency_p50_ms: float,
) -> list[str]:
    """Reasons the candidate fails its gates; an empty list means it passes."""
    name, _ = PRIMARY[task]
    reasons = []
    base_lift = lift(task, metrics[name], baseline[name])
    if not base_lift > gates.baseline_margin:
        reasons.append(
            f"{name} {metrics[name]:.4f} does not beat the baseline's {baseline[name]:.4f} by "
            f"more than gates.baseline_margin={gates.baseline_margin} (lift {base_lift:+.4f})"
        )
    if champion is not None and gates.champion_margin is not None:
        ch_lift = lift(task, metrics[name], champion[name])
        if not ch_lift > gates.champion_margin:
            reasons.append(
                f"{name} {metrics[name]:.4f} does not beat the champion's {champion[name]:.4f} "
                f"by more than gates.champion_margin={gates.champion_margin} "
                f"(lift {ch_lift:+.4f})"
            )
    if worst is not None and worst["gap"] > gates.max_slice_gap:
        reasons.append(
            f"slice {worst['feature']}={worst['value']} ({worst['rows']} rows) has {name} "
            f"{worst[name]:.4f}, {worst['gap']:.4f} behind overall; "
            f"gates.max_slice_gap={gates.max_slice_gap}"
        )
    if latency_p50_ms > gates.latency_budget_ms:
        reasons.append(
            f"ONNX single-row p50 latency {latency_p50_ms:.3f} ms exceeds "
            f"gates.latency_budget_ms={gates.latency_budget_ms}"
        )
    return reasons
