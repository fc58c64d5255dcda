"""The slice gate: is the model worse on some slice of the holdout than overall, by more than
`gates.max_slice_gap`, beyond what sampling error explains?

A slice's metric is an estimate with a standard error that grows as the slice shrinks (a 51-row
AUC has one near 0.08), and a holdout has many slices, so some always look bad by chance. Each
slice is therefore a one-sided test of H0: gap <= max_slice_gap, where gap is how far the slice
trails the overall metric (AUC and macro-F1 in points; RMSE as a fraction of the overall RMSE),
and the family of slices is corrected (Holm by default). A slice fails only when its adjusted
p-value is below alpha: its interval lies entirely past the bound.

Regression slices are judged against the error the model makes on rows like theirs. Where the
target's noise grows with its size (prices), every good model has a larger RMSE on the expensive
rows, and "RMSE 0.85 behind the overall" refused them all. The holdout's absolute errors are
fitted as a + b * |prediction| (non-negative least squares), scaled so that their root mean square
is the overall RMSE; a slice's gap is its RMSE over the RMSE that curve expects for its rows, minus
one. With constant noise b is ~0 and this is the plain "fraction of the overall RMSE"; with noise
proportional to the target a is ~0 and each slice is judged relative to its own size. The limit:
a model that is bad on exactly the highest (or lowest) predictions looks like noise that grows with
them, so that part of the gap is absorbed (simulated in tests/simulations.py, README
"Verdicts"). AUC and macro-F1 are bounded and scale-free, so classification slices keep the plain
gap in points.

Standard errors: AUC by DeLong's method (Sun & Xu's fast midrank form); RMSE by the delta method
on the mean squared error (the expected RMSE taken as known); macro-F1 by a bootstrap of the slice's rows. The overall metric is
taken as known (it is estimated on the whole holdout).

Slices: every value of each categorical column (values with fewer than `min_rows` rows pooled as
one slice, so a 4,000-level column gives a bounded report), quantile bins of numeric columns,
and missing values as a slice of their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from shipyard.multiplicity import adjust
from shipyard.training.evaluation import PRIMARY, task_metrics

MISSING = "<missing>"
MIN_CLASS_ROWS = 10  # an AUC slice needs this many rows of each class to be tested (DeLong's
# normal approximation is too narrow below that)
BOOTSTRAP = 200


def delong(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(AUC, its variance) by DeLong's method, in O(n log n) with midranks (Sun & Xu, 2014)."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, math.nan
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    tx, ty = ranks[:m], ranks[m:]
    auc = (tx.sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tx - stats.rankdata(pos)) / n  # per positive: share of negatives it outranks
    v01 = 1 - (ty - stats.rankdata(neg)) / m  # per negative: share of positives above it
    var = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    return float(auc), float(var)


def rmse_se(y: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(RMSE, its standard error) by the delta method on the mean squared error."""
    sq = (np.asarray(out, np.float64) - np.asarray(y, np.float64)) ** 2
    mse = float(sq.mean())
    if len(sq) < 2 or mse == 0:
        return math.sqrt(mse), 0.0
    return math.sqrt(mse), float(sq.std(ddof=1) / math.sqrt(len(sq)) / (2 * math.sqrt(mse)))


def error_scale(y: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(each row's expected error size, a, b): |error| fitted as a + b * |prediction| with
    a, b >= 0, rescaled so that its root mean square is the overall RMSE."""
    y, out = np.asarray(y, np.float64), np.asarray(out, np.float64)
    err, size = np.abs(out - y), np.abs(out)
    rmse = float(np.sqrt(np.mean(err**2)))
    width = float(size.std())
    if width == 0 or rmse == 0:
        return np.full(len(y), rmse), rmse, 0.0
    # Predictions standardised for the fit (prices of 10^4 beside a constant column).
    (a, b), _ = optimize.nnls(np.column_stack([np.ones(len(y)), size / width]), err)
    expected = a + b * size / width
    k = rmse / float(np.sqrt(np.mean(expected**2))) if expected.any() else 0.0
    if k == 0:
        return np.full(len(y), rmse), rmse, 0.0
    return expected * k, float(a * k), float(b * k / width)


def macro_f1_se(
    y: np.ndarray, out: np.ndarray, k: int, seed: int = 0, n_boot: int = BOOTSTRAP
) -> tuple[float, float]:
    """(macro-F1 over the classes present, its bootstrap standard error)."""
    pred = out.argmax(axis=1)
    rng = np.random.default_rng(seed)
    idx = np.vstack([np.arange(len(y)), rng.integers(0, len(y), (n_boot, len(y)))])
    yt, yp = y[idx], pred[idx]
    f1 = np.zeros(len(idx))
    present = np.zeros(len(idx))
    for c in range(k):
        tp = ((yt == c) & (yp == c)).sum(axis=1)
        fp = ((yt != c) & (yp == c)).sum(axis=1)
        fn = ((yt == c) & (yp != c)).sum(axis=1)
        there = (tp + fp + fn) > 0
        f1 += np.where(there, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        present += there
    scores = f1 / np.maximum(present, 1)
    return float(scores[0]), float(scores[1:].std(ddof=1))


def slice_masks(
    frame: pd.DataFrame, categorical: Sequence[str], numeric: Sequence[str], bins: int,
    min_rows: int,
) -> list[tuple[str, str, np.ndarray]]:  # fmt: skip
    """(column, value, mask) of every slice: categorical values (rare ones pooled), quantile
    bins of numeric columns, and missing values."""
    out: list[tuple[str, str, np.ndarray]] = []
    for col in categorical:
        values = frame[col].astype("string").fillna(MISSING).to_numpy(dtype=object)
        uniq, counts = np.unique(values, return_counts=True)
        rare = [v for v, c in zip(uniq, counts, strict=True) if c < min_rows and v != MISSING]
        for v, c in zip(uniq, counts, strict=True):
            if c >= min_rows or v == MISSING:
                out.append((col, str(v), values == v))
        if len(rare) > 1:
            out.append((col, f"<{len(rare)} values under {min_rows} rows>", np.isin(values, rare)))
        elif rare:
            out.append((col, str(rare[0]), values == rare[0]))
    for col in numeric:
        x = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
        missing = np.isnan(x)
        if bins > 1 and (~missing).any():
            edges = np.unique(np.quantile(x[~missing], np.linspace(0, 1, bins + 1)))
            inner = edges[1:-1]
            which = np.searchsorted(inner, x, side="right")
            for b in range(len(inner) + 1):
                lo = "-inf" if b == 0 else f"{inner[b - 1]:.4g}"
                hi = "inf" if b == len(inner) else f"{inner[b]:.4g}"
                out.append((col, f"[{lo}, {hi})", (which == b) & ~missing))
        if missing.any():
            out.append((col, MISSING, missing))
    return out


def _estimate(task: str, y: np.ndarray, out: np.ndarray) -> tuple[float, float, str | None]:
    """(metric, standard error, why it cannot be tested) of one slice."""
    if task == "binary":
        n_pos = int((y == 1).sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            only = "positive" if n_neg == 0 else "negative"
            return math.nan, math.nan, f"no AUC: every row is {only}"
        auc, var = delong(y, out)
        if min(n_pos, n_neg) < MIN_CLASS_ROWS:
            return auc, math.sqrt(var), f"too few to test ({n_pos} positive, {n_neg} negative)"
        return auc, math.sqrt(var), None
    if task == "regression":
        rmse, se = rmse_se(y, out)
        return rmse, se, None
    f1, se = macro_f1_se(y, out, out.shape[1])
    return f1, se, None


def slice_report(
    task: str,
    frame: pd.DataFrame,
    y: np.ndarray,
    out: np.ndarray,
    *,
    categorical: Sequence[str],
    numeric: Sequence[str],
    max_gap: float,
    alpha: float = 0.05,
    correction: str = "holm",
    min_rows: int = 30,
    bins: int = 4,
) -> dict[str, Any]:
    """Every slice's metric, interval, rows and verdict (worst first), and the gate's failures."""
    name, higher = PRIMARY[task]
    overall = task_metrics(task, y, out)[name]
    z = float(stats.norm.ppf(1 - alpha / 2))
    relative = task == "regression"
    scale, a, b = error_scale(y, out) if relative else (None, math.nan, math.nan)
    rows: list[dict[str, Any]] = []
    for col, value, mask in slice_masks(frame, categorical, numeric, bins, min_rows):
        n = int(mask.sum())
        if n == 0:
            continue
        metric, se, untestable = _estimate(task, y[mask], out[mask])
        if not untestable and n < min_rows:
            untestable = f"too few to test ({n} rows < gates.min_slice_rows={min_rows})"
        row: dict[str, Any] = {"feature": col, "value": value, "rows": n, name: metric}
        row["ci95"] = [metric - z * se, metric + z * se] if math.isfinite(se) else None
        if math.isfinite(metric):
            if scale is not None:  # regression: against the RMSE expected on these rows
                expected = float(np.sqrt(np.mean(scale[mask] ** 2)))
                row["expected_" + name] = expected
                gap, unit = metric - expected, expected if expected > 0 else 1.0
            else:
                gap, unit = (overall - metric) if higher else (metric - overall), 1.0
            row["gap"] = gap / unit
            if untestable is None:
                if se > 0:
                    row["p_value"] = float(stats.norm.sf((gap / unit - max_gap) / (se / unit)))
                else:
                    row["p_value"] = 0.0 if gap / unit > max_gap else 1.0
        else:
            row["gap"] = None
        row["untested"] = untestable
        rows.append(row)
    tested = [r for r in rows if "p_value" in r]
    for r, p in zip(tested, adjust([r["p_value"] for r in tested], correction), strict=True):
        r["p_adjusted"] = p
        r["verdict"] = "fails" if p < alpha else "passes"
    for r in rows:
        r.setdefault("verdict", "untested")
    rows.sort(
        key=lambda r: (r["verdict"] != "fails", -(r["gap"] if r["gap"] is not None else -1e9))
    )
    failures = [r for r in rows if r["verdict"] == "fails"]
    report: dict[str, Any] = {
        "metric": name,
        "overall": overall,
        "gap_is": f"fraction of the {name} expected on the slice's rows"
        if relative
        else f"{name} points",
        "max_gap": max_gap,
        "alpha": alpha,
        "correction": correction,
        "tested": len(tested),
        "untested": len(rows) - len(tested),
        "failed": len(failures),
        "slices": rows,
    }
    if relative:  # the error curve the regression gaps are measured against
        report["error_scale"] = {"constant": a, "per_unit_of_prediction": b}
    return report


def describe(r: dict[str, Any], name: str) -> str:
    """One slice as a person reads it: `dest=BDL (51 rows): auc 0.547 [0.39, 0.70], gap 0.242`."""
    ci = r.get("ci95")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    metric = r[name]
    value = f"{metric:.4f}" if metric == metric else "n/a"
    gap = f", gap {r['gap']:.3f}" if r.get("gap") is not None else ""
    p = f", adjusted p {r['p_adjusted']:.2g}" if "p_adjusted" in r else ""
    why = f" ({r['untested']})" if r.get("untested") else ""
    expected = r.get("expected_" + name)
    exp = f", expected {expected:.4g}" if expected is not None else ""
    return (
        f"{r['feature']}={r['value']} ({r['rows']} rows): {name} {value}{interval}{exp}{gap}{p}"
        f"{why}"
    )


def failures(report: dict[str, Any], shown: int = 5) -> list[str]:
    """The gate's reasons: the failing slices, worst first (the first `shown` by name)."""
    name, failed = report["metric"], [r for r in report["slices"] if r["verdict"] == "fails"]
    if not failed:
        return []
    reasons = []
    for r in failed[:shown]:
        lo, hi = r["ci95"]
        expected = r.get("expected_" + name)
        against = (
            f"the {expected:.4g} expected on its rows" if expected is not None
            else f"the overall {report['overall']:.4f}"
        )  # fmt: skip
        reasons.append(
            f"slice {r['feature']}={r['value']} ({r['rows']} rows): {name} {r[name]:.4f} "
            f"[{lo:.3f}, {hi:.3f}], {r['gap']:.3f} behind {against}: "
            f"more than gates.max_slice_gap={report['max_gap']} ({report['gap_is']}) with "
            f"confidence ({report['correction']}-adjusted p {r['p_adjusted']:.2g} < "
            f"{report['alpha']} over {report['tested']} slices)"
        )
    if len(failed) > shown:
        reasons.append(f"and {len(failed) - shown} more slices (evaluation.json, slices)")
    return reasons


def broken(task: str, y: np.ndarray, out: np.ndarray, positive: Any = None) -> list[str]:
    """What makes a model broken whatever the baseline, checked before any gate: predictions
    that are the same for every holdout row, and (binary) a holdout AUC below 0.5 by more than
    its 95% interval (DeLong), which means the model ranks the classes the wrong way round."""
    reasons = []
    flat = out.reshape(len(out), -1)
    if len(out) > 1 and float(np.ptp(flat, axis=0).max()) <= 1e-9:
        shown = np.round(flat[0], 4).tolist()
        reasons.append(
            f"broken: the model predicts the same for all {len(out)} holdout rows "
            f"({shown[0] if len(shown) == 1 else shown}): it learnt nothing from the features"
        )
    if task == "binary":
        auc, var = delong(y, out)
        hi = auc + 1.96 * math.sqrt(var) if math.isfinite(var) else math.nan
        if math.isfinite(hi) and hi < 0.5:
            reasons.append(
                f"broken: holdout auc {auc:.4f} [{auc - (hi - auc):.3f}, {hi:.3f}] is below "
                f"0.5 (chance) with confidence: the model ranks positive class {positive!r} "
                "below the other; check the target's labels and data.positive_class"
            )
    return reasons
