"""Holdout evaluation: overall metrics per task, calibration and the promotion gates (slices:
`shipyard.training.slices`; groups: `shipyard.training.fairness`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
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
    latency_p50_ms: float,
    verdicts: Sequence[str] = (),
    broken: Sequence[str] = (),
) -> list[str]:
    """Reasons the candidate fails its gates; an empty list means it passes. `broken`: why the
    model is broken (`shipyard.training.slices.broken`), first; `verdicts`: the slice and fairness gates' own reasons
    (see `shipyard.training.slices`, `.fairness`)."""
    name, _ = PRIMARY[task]
    reasons = list(broken)
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
    reasons.extend(verdicts)
    if latency_p50_ms > gates.latency_budget_ms:
        reasons.append(
            f"ONNX single-row p50 latency {latency_p50_ms:.3f} ms exceeds "
            f"gates.latency_budget_ms={gates.latency_budget_ms}"
        )
    return reasons
