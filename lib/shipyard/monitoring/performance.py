"""Performance drift: the rolling metric of labelled live predictions vs the evaluation report.

Outcomes from /feedback are joined to the prediction they belong to; when they are the model's
label (`performance.outcome_is_label`), the last `window` pairs give a rolling metric: AUC for a
binary model, RMSE for a regression. It is drifted when it is worse than the version's holdout
metric by at least `max_drop` AND the drop is significant one-sided at `alpha` (AUC: Hanley and
McNeil's standard error; RMSE: a one-sample t-test on squared errors), so a small sample does
not alarm on noise. Multiclass models are not judged (a single score per prediction cannot
carry a multiclass metric).
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
from scipy import stats

from shipyard.config.serving import PerformanceSection


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 1e-12))


class PerformanceMonitor:
    def __init__(
        self,
        task: str,
        reference: dict[str, float],
        settings: PerformanceSection | None = None,
    ) -> None:
        """`settings`: the serving config's `performance` section (its defaults when None)."""
        settings = settings or PerformanceSection()
        self.task = task
        self.metric = {"binary": "auc", "regression": "rmse"}.get(task)
        self.reference = reference.get(self.metric) if self.metric else None
        self.pairs: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=settings.window
        )
        self.min_outcomes, self.max_drop = settings.min_outcomes, settings.max_drop
        self.alpha = settings.alpha
        self.total = 0
        self.drifted = False
        self.since: float | None = None

    def add(self, prediction: float, outcome: float, now: float) -> list[dict[str, Any]]:
        """One labelled prediction -> the events it causes (performance drift started/resolved)."""
        if self.metric is None or self.reference is None:
            return []
        if not (math.isfinite(prediction) and math.isfinite(outcome)):
            return []
        self.pairs.append((float(prediction), float(outcome)))
        self.total += 1
        verdict = self.judge()
        if verdict["judged"] and verdict["drifted"] != self.drifted:
            self.drifted = verdict["drifted"]
            self.since = now if self.drifted else None
            kind = "performance_drift_started" if self.drifted else "performance_drift_resolved"
            return [{"kind": kind, **{k: verdict[k] for k in ("metric", "value", "reference",
                                                               "p_value", "n")}}]  # fmt: skip
        return []

    def judge(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric, "reference": self.reference, "n": len(self.pairs),
            "total": self.total, "judged": False, "value": None, "p_value": None,
            "drifted": self.drifted, "since": self.since,
        }  # fmt: skip
        if self.metric is None or self.reference is None or len(self.pairs) < self.min_outcomes:
            return out
        p, y = np.array(self.pairs).T
        if self.metric == "auc":
            # DeLong's midrank AUC (sklearn's value, ties as half) without sklearn's input
            # checks, which cost ~100x the arithmetic on every labelled outcome judged here.
            from shipyard.training.slices import delong

            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            if n_pos == 0 or n_neg == 0 or n_pos + n_neg != len(y):
                out["note"] = "outcomes must be 0/1 labels with both classes present"
                return out
            value = delong(y, p)[0]
            se = auc_standard_error(self.reference, n_pos, n_neg)
            p_value = float(stats.norm.cdf((value - self.reference) / se))
            worse = self.reference - value >= self.max_drop
        else:
            sq = (p - y) ** 2
            value = float(math.sqrt(sq.mean()))
            test = stats.ttest_1samp(sq, self.reference**2, alternative="greater")
            p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
            worse = value >= self.reference * (1 + self.max_drop)
        out.update(judged=True, value=value, p_value=p_value,
                   drifted=bool(worse and p_value < self.alpha))  # fmt: skip
        return out

    def state(self) -> dict[str, Any]:
        return {"pairs": list(self.pairs), "total": self.total, "drifted": self.drifted,
                "since": self.since}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.pairs.extend((float(a), float(b)) for a, b in state.get("pairs", []))
        self.total = int(state.get("total", 0))
        self.drifted = bool(state.get("drifted", False))
        self.since = state.get("since")
