"""Error rates of Shipyard's verdicts, measured by simulation.

The unit tests run these at a few hundred repetitions and assert the bounds; run
`python -m tests.simulations` for the README's figures (more repetitions, same code).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from shipyard.ab.statistics import Moments
from shipyard.training.slices import slice_report

GAP = 0.15  # gates.max_slice_gap's default


def binormal(rng: np.random.Generator, n: int, auc: float, rate: float) -> tuple[Any, Any]:
    """Labels and scores with a given true AUC: negatives N(0, 1), positives N(d, 1),
    AUC = Phi(d / sqrt 2)."""
    y = (rng.random(n) < rate).astype(int)
    s = rng.normal(0.0, 1.0, n) + np.sqrt(2) * stats.norm.ppf(auc) * y
    return y, 1 / (1 + np.exp(1 - s))


def auc(y: Any, p: Any) -> float:
    """ROC AUC from ranks (Mann-Whitney, ties counted half): sklearn's `roc_auc_score`, without
    its input checks, which took two thirds of the 100-slice simulation's time."""
    ranks = stats.rankdata(p)
    pos = np.asarray(y) == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def old_rule_refuses(frame: pd.DataFrame, y: Any, p: Any, min_rows: int = 50) -> bool:
    """The gate before: refuse if any slice's point AUC trails the overall by > GAP."""
    overall = auc(y, p)
    for _, idx in frame.groupby("g").indices.items():
        testable = len(idx) >= min_rows and len(np.unique(y[idx])) == 2
        if testable and overall - auc(y[idx], p[idx]) > GAP:
            return True
    return False


def slice_gate(
    slices: int, rows: int, *, rate: float = 0.3, good: float = 0.80, bad: float | None = None,
    reps: int = 200, seed: int = 0, old_rule: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """How often the slice gate refuses a model (and names slice g0, the bad one if `bad`)."""
    rng = np.random.default_rng(seed)
    refused = caught = old = 0
    gaps = []
    groups = pd.DataFrame({"g": np.repeat([f"g{j}" for j in range(slices)], rows)})
    for _ in range(reps):
        parts = [binormal(rng, rows, bad if bad and j == 0 else good, rate) for j in range(slices)]
        y = np.concatenate([a for a, _ in parts])
        p = np.concatenate([b for _, b in parts])
        report = slice_report(
            "binary", groups, y, p, categorical=["g"], numeric=[], max_gap=GAP, min_rows=30
        )
        failed = {s["value"] for s in report["slices"] if s["verdict"] == "fails"}
        refused += bool(failed)
        caught += "g0" in failed
        by = {s["value"]: s for s in report["slices"]}
        gaps.append(by["g0"]["gap"])
        if old_rule:
            old += old_rule_refuses(groups, y, p)
    out = {"slices": slices, "rows": rows, "rate": rate, "reps": reps,
           "refused": refused / reps, "caught": caught / reps,
           "mean_gap_of_g0": float(np.mean(gaps))}  # fmt: skip
    if old_rule:
        out["old_rule_refused"] = old / reps
    return out


def regression_slices(
    rng: np.random.Generator, slices: int, rows: int, *, proportional: bool, bad: float | None,
    sigma: float = 0.15, tau: float = 0.06, top: bool = False,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """Slice labels, a target and a model's predictions. Slice j's
    level runs from 500 to 15,000 (g0's in the middle, or at the top if `top`), the target is level * exp(0.8 x) with
    noise `sigma` times the target (`proportional`, prices) or times the mean target; the model
    errs by `tau` on the same scale, and in g0 by (1 + bad) times its RMSE elsewhere if `bad`."""
    g = np.repeat(np.arange(slices), rows)
    rank = (slices - 1 - g) if top else (g + slices // 2) % slices
    level = 500 * 30 ** (rank / max(slices - 1, 1))
    x = rng.random(len(g))
    mu = level * np.exp(0.8 * x)
    scale = mu if proportional else np.full(len(g), mu.mean())
    y = mu + sigma * scale * rng.normal(size=len(g))
    out = mu + tau * scale * rng.normal(size=len(g))
    if bad:
        extra = np.sqrt(sigma**2 + tau**2) * np.sqrt((1 + bad) ** 2 - 1)
        out = out + (g == 0) * extra * scale * rng.normal(size=len(g))
    return np.array([f"g{j}" for j in g], dtype=object), y, out


def plain_rule_refuses(g: Any, y: Any, out: Any) -> set[str]:
    """The regression rule before: the slice's RMSE as a fraction of the overall RMSE, one-sided
    test against GAP, Holm over the slices (what rmse_se and slice_report did before)."""
    from shipyard.multiplicity import adjust
    from shipyard.training.slices import rmse_se

    overall = float(np.sqrt(np.mean((out - y) ** 2)))
    names = list(np.unique(g))
    ps = []
    for v in names:
        rmse, se = rmse_se(y[g == v], out[g == v])
        ps.append(float(stats.norm.sf(((rmse - overall) / overall - GAP) / (se / overall))))
    return {v for v, p in zip(names, adjust(ps, "holm"), strict=True) if p < 0.05}


def regression_slice_gate(
    slices: int, rows: int, *, proportional: bool, bad: float | None = None, reps: int = 200,
    seed: int = 0, top: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """How often the regression slice gate refuses a model (and names g0, the bad one if `bad`),
    and the plain rule it replaced, on the same draws."""
    rng = np.random.default_rng(seed)
    counts = {"refused": 0, "caught": 0, "plain_refused": 0, "plain_caught": 0}
    gaps = []
    for _ in range(reps):
        g, y, out = regression_slices(
            rng, slices, rows, proportional=proportional, bad=bad, top=top
        )
        report = slice_report(
            "regression", pd.DataFrame({"g": g}), y, out, categorical=["g"], numeric=[],
            max_gap=GAP, min_rows=30,
        )  # fmt: skip
        failed = {s["value"] for s in report["slices"] if s["verdict"] == "fails"}
        plain = plain_rule_refuses(g, y, out)
        counts["refused"] += bool(failed)
        counts["caught"] += "g0" in failed
        counts["plain_refused"] += bool(plain)
        counts["plain_caught"] += "g0" in plain
        gaps.append(next(s["gap"] for s in report["slices"] if s["value"] == "g0"))
    noise = "proportional to the target" if proportional else "constant"
    return {"slices": slices, "rows": rows, "noise": noise, "bad": bad, "top": top, "reps": reps,
            **{k: v / reps for k, v in counts.items()}, "mean_gap_of_g0": float(np.mean(gaps))}  # fmt: skip


FAIRNESS_BOUNDS: dict[str, float | None] = {
    "max_demographic_parity_difference": 0.05,
    "max_equalized_odds_difference": None,
}


def draw_groups(rng: np.random.Generator, rates: dict[str, float], n: int) -> tuple[Any, ...]:
    """Groups of n rows whose scores select `rates[g]` of the group at threshold 0.5."""
    g = np.repeat(list(rates), n)
    p = np.concatenate([np.where(rng.random(n) < r, 0.75, 0.25) for r in rates.values()])
    y = (rng.random(len(p)) < p).astype(int)
    return pd.Series(g, name="group"), y, p


def fairness_gate(reps: int = 400, rows: int = 1500, seed: int = 2) -> dict[str, Any]:
    """How often the demographic-parity gate (bound 0.05) refuses two groups of `rows` whose
    selection rates differ by exactly the bound, and by twice it."""
    from shipyard.training import fairness

    rng = np.random.default_rng(seed)
    refused = {0.35: 0, 0.40: 0}
    for _ in range(reps):
        for b in refused:
            g, y, p = draw_groups(rng, {"a": 0.30, "b": b}, rows)
            cells = fairness.cell_counts(g.to_numpy(), y, (p >= 0.5).astype(int), ["a", "b"])
            gaps = fairness.gap_tests(cells, FAIRNESS_BOUNDS, seed=int(rng.integers(1 << 30)))
            refused[b] += gaps["demographic_parity_difference"]["p_value"] < 0.05
    return {"rows_per_group": rows, "reps": reps, "refused_at_bound": refused[0.35] / reps,
            "caught_at_twice_the_bound": refused[0.40] / reps}  # fmt: skip


def aa_repeated_keys(
    reps: int = 200, keys: int = 2000, looks: int = 50, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """A/A tests with repeated keys: each key sends 1-50 requests, all in its variant, with an
    outcome propensity of its own (Beta(0.5, 2): mean 0.2, very uneven). The analysis looks
    `looks` times as outcomes arrive. How often does it call a difference, per key (Shipyard)
    and per request (as if every request were independent)?"""
    from shipyard.ab import statistics as abstats

    rng = np.random.default_rng(seed)
    hits = {"per_key_sequential": 0, "per_key_fixed": 0,
            "per_request_sequential": 0, "per_request_fixed": 0}  # fmt: skip
    for _ in range(reps):
        n_k = rng.integers(1, 51, keys)
        q_k = rng.beta(0.5, 2.0, keys)
        arm = rng.integers(0, 2, keys)
        key = np.repeat(np.arange(keys), n_k)
        t = rng.random(key.size)
        y = (rng.random(key.size) < q_k[key]).astype(np.float64)
        p_key = p_req = 1.0
        tau = None
        for f in np.linspace(1 / looks, 1, looks):
            seen = t <= f
            units = [
                abstats.KeyedOutcomes.from_units(
                    np.bincount(key[seen & (arm[key] == a)], y[seen & (arm[key] == a)], keys),
                    np.bincount(key[seen & (arm[key] == a)], minlength=keys),
                )
                for a in (0, 1)
            ]
            ctl, trt = units
            if tau is None:
                pooled = (ctl.sum_y + trt.sum_y) / (ctl.sum_n + trt.sum_n)
                tau = 0.1 * float(np.sqrt(pooled * (1 - pooled)))  # ab.msprt_tau's default
            diff = trt.mean - ctl.mean
            a, b = (Moments(c.n, c.mean, c.mean * (1 - c.mean) * c.n) for c in units)
            p_key = min(p_key, abstats.msprt_p(diff, ctl.var_of_mean + trt.var_of_mean, tau))
            p_req = min(p_req, abstats.msprt_p(diff, abstats.diff_variance(a, b, True), tau))
        hits["per_key_sequential"] += p_key < alpha
        hits["per_request_sequential"] += p_req < alpha
        hits["per_key_fixed"] += abstats.keyed_ztest(ctl, trt)[1] < alpha
        hits["per_request_fixed"] += (
            abstats.two_proportion_ztest(a.total, a.n, b.total, b.n)[1] < alpha
        )
    return {"keys": keys, "looks": looks, "reps": reps, "alpha": alpha,
            **{k: v / reps for k, v in hits.items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=1000)
    reps = ap.parse_args().reps
    rows = [
        slice_gate(100, 60, reps=reps, old_rule=True),
        slice_gate(20, 100, reps=reps, old_rule=True),
        slice_gate(20, 300, good=0.82, bad=0.50, reps=reps, old_rule=True),
        regression_slice_gate(10, 300, proportional=True, reps=reps),
        regression_slice_gate(20, 100, proportional=False, reps=reps),
        regression_slice_gate(20, 1000, proportional=False, bad=0.3, reps=reps),
        regression_slice_gate(10, 1000, proportional=True, bad=0.3, reps=reps),
        regression_slice_gate(10, 1000, proportional=True, bad=0.3, top=True, reps=reps),
    ]
    rows.append(fairness_gate(reps=reps))
    rows.append(aa_repeated_keys(reps=reps))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
