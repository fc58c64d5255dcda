"""Fairness on declared groups (binary tasks): per-group selection rate, TPR, FPR and
calibration with Fairlearn's `MetricFrame`, and the two gaps with intervals:

- demographic-parity difference: the largest difference in selection rate between groups;
- equalized-odds difference: the larger of the largest TPR and the largest FPR differences.

Each gap has a bootstrap interval and a one-sided p-value for H0: gap <= the configured bound.
The bootstrap resamples the holdout's rows; since every figure here is a function of the counts
per (group, label, decision) cell, resampling the rows is a multinomial draw of those counts, which
is exact and takes milliseconds where resampling a frame takes seconds. The configured gaps form
one family with Holm's correction, as slices do. Groups smaller than `min_group_rows` are
reported but left out of the gaps (their rates are mostly noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from shipyard.multiplicity import adjust
from shipyard.training.slices import MISSING

GAPS = {
    "demographic_parity_difference": "max_demographic_parity_difference",
    "equalized_odds_difference": "max_equalized_odds_difference",
}
N_BOOT = 2000
# Equalized odds compares TPR and FPR: a group with fewer actual positives (or negatives) than
# this has no rate worth comparing, and is left out of that gap with its counts.
MIN_CLASS_ROWS = 10


def _mean_prediction(y_true: Any, y_pred: Any) -> float:
    return float(np.mean(y_pred)) if len(y_pred) else math.nan


def _observed_rate(y_true: Any, y_pred: Any) -> float:
    return float(np.mean(y_true)) if len(y_true) else math.nan


def _gaps(cells: np.ndarray) -> dict[str, np.ndarray]:
    """Gaps from counts shaped [..., group, label, decision] (any leading batch axes)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = cells.sum(axis=(-1, -2))
        selection = cells[..., 1].sum(axis=-1) / n
        tpr = cells[..., 1, 1] / cells[..., 1, :].sum(axis=-1)
        fpr = cells[..., 0, 1] / cells[..., 0, :].sum(axis=-1)

    def spread(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.nanmax(x, axis=-1) - np.nanmin(x, axis=-1))

    return {
        "demographic_parity_difference": spread(selection),
        "equalized_odds_difference": np.maximum(spread(tpr), spread(fpr)),
    }


def gap_tests(
    cells: np.ndarray, bounds: dict[str, float | None], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Each gap of counts shaped [group, label, decision]: its value, 95% bootstrap interval
    and, where it has a bound, the one-sided bootstrap p-value of H0: gap <= bound."""
    point = _gaps(cells)
    total = cells.sum()
    rng = np.random.default_rng(seed)
    boot = rng.multinomial(int(total), (cells / total).ravel(), size=N_BOOT)
    draws = _gaps(boot.reshape((N_BOOT, *cells.shape)).astype(np.float64))
    out: dict[str, dict[str, Any]] = {}
    for name, bound_key in GAPS.items():
        d = draws[name][np.isfinite(draws[name])]
        bound = bounds.get(bound_key)
        gap: dict[str, Any] = {
            "value": float(point[name]),
            "ci95": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))],
            "bound": bound,
        }
        if bound is not None:
            gap["p_value"] = float((1 + np.sum(d <= bound)) / (1 + len(d)))
        out[name] = gap
    return out


def cell_counts(labels: np.ndarray, y: np.ndarray, decision: np.ndarray, groups: list[str]) -> Any:
    """Counts per (group, label, decision)."""
    cells = np.zeros((len(groups), 2, 2))
    for i, k in enumerate(groups):
        m = labels == k
        for yy in (0, 1):
            for dd in (0, 1):
                cells[i, yy, dd] = np.sum((y[m] == yy) & (decision[m] == dd))
    return cells


def group_report(
    y: np.ndarray,
    p: np.ndarray,
    groups: pd.Series,
    *,
    threshold: float,
    min_rows: int,
    bounds: dict[str, float | None],
    seed: int = 0,
) -> dict[str, Any]:
    """Per-group metrics and the two gaps (with 95% intervals and one-sided p-values against
    their bounds) for one sensitive column."""
    g = groups.astype("string").fillna(MISSING).rename(str(groups.name))
    decision = (p >= threshold).astype(int)
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "observed_rate": _observed_rate,
            "rows": count,
        },
        y_true=y,
        y_pred=decision,
        sensitive_features=g,
    )
    # Calibration per group needs the probabilities, not the decisions.
    calib = MetricFrame(metrics=_mean_prediction, y_true=y, y_pred=p, sensitive_features=g).by_group
    table = frame.by_group.assign(mean_prediction=calib)
    table["calibration_gap"] = table["mean_prediction"] - table["observed_rate"]
    kept = [str(k) for k, n in table["rows"].items() if n >= min_rows]
    out: dict[str, Any] = {
        "column": str(groups.name),
        "threshold": threshold,
        "groups": {
            str(k): {c: (None if pd.isna(v) else float(v)) for c, v in row.items()}
            for k, row in table.iterrows()
        },
        "gapped_groups": kept,
        "gaps": {},
    }
    if len(kept) < 2:
        out["note"] = f"fewer than two groups with {min_rows}+ rows: no gaps"
        return out
    cells = cell_counts(g.to_numpy(dtype=object), y, decision, kept)
    out["gaps"] = estimable_gaps(cells, kept, bounds, threshold, seed)
    return out


def not_estimable(reason: str, bound: float | None) -> dict[str, Any]:
    return {"value": None, "ci95": None, "bound": bound, "verdict": "not estimable",
            "reason": reason}  # fmt: skip


def estimable_gaps(
    cells: np.ndarray,
    groups: list[str],
    bounds: dict[str, float | None],
    threshold: float,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The gaps that the counts can tell, each "not estimable" with its reason otherwise:

    - no gap when the decisions are constant (the model selects nobody, or everybody, at the
      threshold): every rate would be equal and every interval zero-width, a "no disparity,
      with certainty" that a degenerate model has not earned;
    - equalized odds only over groups with MIN_CLASS_ROWS+ actual positives and negatives
      (the others are named with their counts); not estimable with fewer than two such groups.
    """
    selected, rows = int(cells[..., 1].sum()), int(cells.sum())
    if selected in (0, rows):
        who = "none" if selected == 0 else "all"
        reason = (f"the model selects {who} of the {rows} rows at threshold {threshold:g}: "
                  "constant decisions say nothing about disparity")  # fmt: skip
        return {name: not_estimable(reason, bounds.get(key)) for name, key in GAPS.items()}
    out = gap_tests(cells, bounds, seed)
    eo = "equalized_odds_difference"
    pos, neg = cells[:, 1, :].sum(axis=-1), cells[:, 0, :].sum(axis=-1)
    ok = (pos >= MIN_CLASS_ROWS) & (neg >= MIN_CLASS_ROWS)
    left_out = [f"{k} ({int(pos[i])} positive, {int(neg[i])} negative)"
                for i, k in enumerate(groups) if not ok[i]]  # fmt: skip
    bound = bounds.get(GAPS[eo])
    if ok.sum() < 2:
        out[eo] = not_estimable(
            f"fewer than two groups with {MIN_CLASS_ROWS}+ actual positives and negatives "
            f"(TPR and FPR need both): {', '.join(left_out)}",
            bound,
        )
        return out
    if left_out:
        out[eo] = {**gap_tests(cells[ok], bounds, seed)[eo], "left_out": left_out}
    return out


def fairness_report(
    frame: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    *,
    sensitive: list[str],
    threshold: float,
    min_rows: int,
    bounds: dict[str, float | None],
    alpha: float,
    correction: str,
) -> dict[str, Any]:
    """Every sensitive column's groups and gaps; the bounded gaps are one corrected family."""
    columns = [
        group_report(y, p, frame[c], threshold=threshold, min_rows=min_rows, bounds=bounds)
        for c in sensitive
    ]
    tested = [
        (col["column"], name, gap)
        for col in columns
        for name, gap in col["gaps"].items()
        if "p_value" in gap
    ]
    adjusted = adjust([gap["p_value"] for _, _, gap in tested], correction)
    failures = []
    for (column, name, gap), p_adj in zip(tested, adjusted, strict=True):
        gap["p_adjusted"] = p_adj
        gap["verdict"] = "fails" if p_adj < alpha else "passes"
        if gap["verdict"] == "fails":
            failures.append(
                f"fairness: {name} on {column} is {gap['value']:.3f} "
                f"[{gap['ci95'][0]:.3f}, {gap['ci95'][1]:.3f}], above fairness.{GAPS[name]}="
                f"{gap['bound']} with confidence (adjusted p {p_adj:.2g} < {alpha})"
            )
    return {"alpha": alpha, "correction": correction, "columns": columns, "failures": failures}
