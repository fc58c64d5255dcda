"""The A/B report (GET /ab): per-variant statistics, each treatment compared with control
(z-test at the unit of randomisation, always-valid mSPRT p-values with Holm over the
treatments), sample-ratio mismatch and a recommendation. `look` updates the mSPRT p-values as
outcomes arrive; the rest only reads the experiment."""

from __future__ import annotations

import math
from typing import Any

from shipyard.ab import statistics as abstats
from shipyard.ab.state import ExperimentState
from shipyard.ab.statistics import Moments
from shipyard.multiplicity import holm


def look(exp: ExperimentState) -> None:
    """One more look for every treatment: update the running min of the mSPRT p-value."""
    ctl = exp.stats[exp.control].outcomes
    ctl_keyed = exp.stats[exp.control].keyed
    for name in exp.weights:
        if name == exp.control:
            continue
        trt = exp.stats[name].outcomes
        state = exp.msprt.setdefault(name, {"tau": exp.cfg.ab.msprt_tau, "p": 1.0})
        if min(ctl.n, trt.n) < max(2, exp.cfg.ab.min_outcomes):
            continue
        # At the unit of randomisation: a key's outcomes are not independent draws.
        var = ctl_keyed.var_of_mean + exp.stats[name].keyed.var_of_mean
        if state["tau"] is None:
            pooled = Moments()
            pooled.merge(ctl)
            pooled.merge(trt)
            sd = (
                math.sqrt(pooled.mean * (1 - pooled.mean))
                if exp.cfg.ab.metric == "conversion"
                else math.sqrt(pooled.var)
            )
            if not sd > 0:
                continue
            state["tau"] = 0.1 * sd
        p = abstats.msprt_p(trt.mean - ctl.mean, var, float(state["tau"]))  # type: ignore[arg-type]
        state["p"] = min(float(state["p"]), p)  # type: ignore[arg-type]


def report(exp: ExperimentState) -> dict[str, Any]:
    """GET /ab: per-variant statistics, comparisons with control, SRM and a recommendation."""
    ab = exp.cfg.ab
    variants: dict[str, Any] = {}
    for name, st in exp.stats.items():
        o = st.outcomes
        interval = st.keyed.interval(ab.alpha)  # nan below two units: reported as null
        variants[name] = {
            "model_version": exp.versions[name],
            "weight": exp.weights.get(name, 0.0),
            "shadow": exp.shadow.get(name, 0.0),
            "requests": st.requests,
            "errors": st.errors,
            "rejected": st.rejected,
            "explicit": st.explicit,
            "input_failures": st.input_failures,
            "rerouted": st.rerouted,
            "error_rate": st.errors
            / max(1, st.requests - st.rejected - st.explicit - st.input_failures - st.rerouted),
            "latency_ms": abstats.percentiles(st.latency.values()),
            "mean_prediction": st.predictions.mean if st.predictions.n else None,
            "outcomes": o.n,
            "outcome_units": st.keyed.units,
            "outcome_mean": o.mean if o.n else None,
            "outcome_ci95": list(interval) if all(map(math.isfinite, interval)) else None,
            "rolled_back": exp.rolled_back.get(name),
        }
        if exp.shadows[name].mirrored or exp.shadows[name].dropped:
            variants[name]["shadow_stats"] = exp.shadows[name].report()
    shares = exp.allocation.shares()
    srm = abstats.srm_test({n: s.units for n, s in exp.stats.items()}, shares)
    srm_flagged = srm["p_value"] is not None and srm["p_value"] < ab.srm_p
    srm.update({"flagged": srm_flagged, "threshold": ab.srm_p, "epoch": exp.epoch})
    compared = [
        name
        for name, st in exp.stats.items()
        if name != exp.control
        and (st.outcomes.n or exp.weights.get(name, 0) > 0 or name in exp.rolled_back)
    ]
    # Several treatments are a family: Holm over their always-valid p-values.
    raw = [sequential_p(exp.msprt, n) for n in compared]
    tested = [i for i, p in enumerate(raw) if p is not None]
    family = holm([p for p in raw if p is not None])
    adjusted: dict[str, float] = {compared[i]: family[j] for j, i in enumerate(tested)}
    comparisons = {
        name: compare(exp, name, srm_flagged, adjusted.get(name), len(tested)) for name in compared
    }
    return {
        "model": exp.cfg.model,
        "control": exp.control,
        "metric": ab.metric,
        "alpha": ab.alpha,
        "epoch": exp.epoch,
        "epoch_started": exp.epoch_started,
        "variants": variants,
        "comparisons": comparisons,
        "srm": srm,
        "feedback_pending": len(exp.joins.pending),
        "feedback_unmatched": exp.joins.unmatched,
        "feedback_dropped": exp.joins.dropped,
        "feedback_not_counted": exp.joins.not_counted,
        "store": exp.storage_report(),
    }


def sequential_p(msprt: dict[str, dict[str, float | None]], name: str) -> float | None:
    seq = msprt.get(name, {})
    p = seq.get("p")
    return float(p) if p is not None and seq.get("tau") is not None else None


def compare(
    exp: ExperimentState, name: str, srm_flagged: bool, seq_adjusted: float | None, family: int
) -> dict[str, Any]:
    ab = exp.cfg.ab
    ctl, trt = exp.stats[exp.control].keyed, exp.stats[name].keyed
    diff = trt.mean - ctl.mean if min(ctl.n, trt.n) else None
    stat, p = abstats.keyed_ztest(ctl, trt)
    test = (
        f"z-test, delta-method variance over {ctl.units} + {trt.units} units "
        "(keys; a request without one is its own unit)"
    )
    seq = exp.msprt.get(name, {})
    seq_p = sequential_p(exp.msprt, name)
    breach = exp.guardrail_breach(name) if exp.weights.get(name, 0) > 0 else None
    decision, why = abstats.recommend(
        guardrail_tripped=breach or exp.rolled_back.get(name),
        srm_flagged=srm_flagged,
        n_control=ctl.n,
        n_treatment=trt.n,
        min_outcomes=ab.min_outcomes,
        sequential_p=seq_adjusted,
        diff=diff,
        alpha=ab.alpha,
        higher_is_better=ab.higher_is_better,
    )
    return {
        "against": exp.control,
        "difference": diff,
        "lift": diff / ctl.mean if diff is not None and ctl.mean else None,
        "test": test,
        "statistic": None if stat != stat else stat,
        "p_value": None if p != p else p,
        "sequential_p_value": seq_p,
        "sequential_p_adjusted": seq_adjusted,
        "family": {"treatments": family, "correction": "holm"},
        "sequential_tau": seq.get("tau"),
        "recommendation": decision,
        "reason": why,
    }
