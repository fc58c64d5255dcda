"""A/B statistics from streamed sums: intervals, fixed-horizon tests, mSPRT and SRM.

Everything works from mergeable summaries (counts, sums, Welford moments) so that routers can
stream outcomes and the report never needs the raw rows.

- Tests and intervals: normal, with the delta-method variance over units (below). The
  per-request two-proportion z-test is kept as the reference the A/A simulation compares with.
- Always-valid p-value: mixture SPRT (Johari, Pekelis & Walsh, "Always Valid Inference", 2017)
  on the difference of means with a normal mixing distribution N(0, tau^2). Its running minimum
  over looks is valid however often one looks; the fixed-horizon p-value is not.
- Sample-ratio mismatch: Pearson chi-square of assignments against the configured shares.

The unit of analysis is the unit of randomisation. Keys are assigned to variants, so a key's
requests share its variant and, usually, its behaviour: treating them as independent
understates the variance and a test then calls differences that are not there. `KeyedOutcomes`
keeps per-key sums and analyses the outcome mean as a ratio of per-key sums (sum Y_k / sum N_k)
with the delta method (Deng et al., "Applying the Delta Method in Metric Analytics", 2018); a
request without a key is a unit of its own. Every test, interval and the always-valid p-value
use that variance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats


@dataclasses.dataclass
class Moments:
    """Count, mean and sum of squared deviations (Welford), mergeable exactly (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: Iterable[float]) -> None:
        arr = np.asarray(list(values), dtype=np.float64)
        if arr.size:
            self.merge(
                Moments(int(arr.size), float(arr.mean()), float(((arr - arr.mean()) ** 2).sum()))
            )

    def push(self, x: float) -> None:
        """One value (Welford): the streaming path, without building an array per value."""
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def var(self) -> float:
        """Sample variance (n - 1)."""
        return self.m2 / (self.n - 1) if self.n > 1 else float("nan")

    @property
    def total(self) -> float:
        return self.mean * self.n

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Moments:
        return cls(int(d["n"]), float(d["mean"]), float(d["m2"]))


@dataclasses.dataclass
class KeyedOutcomes:
    """Outcomes by unit of randomisation: per-key (sum, count), and the sums over units that
    the delta-method variance of the mean needs, updated exactly as outcomes arrive."""

    units: int = 0
    sum_y: float = 0.0
    sum_n: float = 0.0
    sum_yy: float = 0.0
    sum_nn: float = 0.0
    sum_yn: float = 0.0
    keys: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def push(self, key: str | None, y: float) -> None:
        if key is None:
            before_y, before_n = 0.0, 0.0
            self.units += 1
        else:
            acc = self.keys.get(key)
            if acc is None:
                acc = self.keys[key] = [0.0, 0.0]
                self.units += 1
            before_y, before_n = acc
            acc[0] += y
            acc[1] += 1
        after_y, after_n = before_y + y, before_n + 1
        self.sum_y += y
        self.sum_n += 1
        self.sum_yy += after_y * after_y - before_y * before_y
        self.sum_nn += after_n * after_n - before_n * before_n
        self.sum_yn += after_y * after_n - before_y * before_n

    @classmethod
    def from_units(cls, y: np.ndarray, n: np.ndarray) -> KeyedOutcomes:
        """From per-unit sums and counts (units with no outcome yet are ignored)."""
        keep = n > 0
        y, n = np.asarray(y, np.float64)[keep], np.asarray(n, np.float64)[keep]
        return cls(int(keep.sum()), float(y.sum()), float(n.sum()), float((y * y).sum()),
                   float((n * n).sum()), float((y * n).sum()))  # fmt: skip

    @property
    def n(self) -> int:
        return int(self.sum_n)

    @property
    def mean(self) -> float:
        return self.sum_y / self.sum_n if self.sum_n else float("nan")

    @property
    def var_of_mean(self) -> float:
        """Delta-method variance of sum Y / sum N over units (nan below two units)."""
        k = self.units
        if k < 2:
            return float("nan")
        ybar, nbar = self.sum_y / k, self.sum_n / k
        var_y = (self.sum_yy - k * ybar * ybar) / (k - 1)
        var_n = (self.sum_nn - k * nbar * nbar) / (k - 1)
        cov = (self.sum_yn - k * ybar * nbar) / (k - 1)
        r = self.mean
        return max(0.0, (var_y - 2 * r * cov + r * r * var_n) / (k * nbar * nbar))

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        half = stats.norm.ppf(1 - alpha / 2) * math.sqrt(self.var_of_mean)
        return (self.mean - half, self.mean + half)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyedOutcomes:
        return cls(**{**d, "keys": {k: list(v) for k, v in d.get("keys", {}).items()}})


def keyed_ztest(a: KeyedOutcomes, b: KeyedOutcomes) -> tuple[float, float]:
    """z and two-sided p for H0: mean_a == mean_b, delta-method variances (b - a)."""
    var = a.var_of_mean + b.var_of_mean
    if not (var > 0 and np.isfinite(var)):
        return (float("nan"), float("nan"))
    z = (b.mean - a.mean) / math.sqrt(var)
    return (z, float(2 * stats.norm.sf(abs(z))))


def two_proportion_ztest(s_a: float, n_a: int, s_b: float, n_b: int) -> tuple[float, float]:
    """z and two-sided p for H0: p_a == p_b, pooled standard error (equals Pearson's 2x2 chi2)."""
    if n_a == 0 or n_b == 0:
        return (float("nan"), float("nan"))
    pooled = (s_a + s_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return (0.0, 1.0)
    z = (s_b / n_b - s_a / n_a) / se
    return (z, float(2 * stats.norm.sf(abs(z))))


def diff_variance(a: Moments, b: Moments, conversion: bool) -> float:
    """Variance of mean_b - mean_a (unpooled)."""
    if conversion:
        va = a.mean * (1 - a.mean)
        vb = b.mean * (1 - b.mean)
    else:
        va, vb = a.var, b.var
    return va / a.n + vb / b.n


def msprt_p(diff: float, var: float, tau: float) -> float:
    """1 / Lambda of the normal-mixture SPRT for one look; take the running min over looks."""
    if not (var > 0 and np.isfinite(var)):
        return 1.0
    t2 = tau * tau
    log_lambda = 0.5 * math.log(var / (var + t2)) + diff * diff * t2 / (2 * var * (var + t2))
    return float(min(1.0, math.exp(-log_lambda)))


def srm_test(observed: dict[str, int], shares: dict[str, float]) -> dict[str, Any]:
    """Pearson chi-square of assignment counts against expected shares (variants with share > 0)."""
    names = [n for n, s in shares.items() if s > 0]
    obs = np.array([observed.get(n, 0) for n in names], dtype=np.float64)
    total = obs.sum()
    if len(names) < 2 or total == 0:
        return {"chi2": None, "p_value": None, "observed": observed, "expected": {}}
    share = np.array([shares[n] for n in names]) / sum(shares[n] for n in names)
    exp = share * total
    chi2, p = stats.chisquare(obs, exp)
    return {
        "chi2": float(chi2),
        "p_value": float(p),
        "observed": {n: int(o) for n, o in zip(names, obs, strict=True)},
        "expected": {n: float(e) for n, e in zip(names, exp, strict=True)},
    }


def percentiles(
    values: np.ndarray, qs: tuple[float, ...] = (50, 95, 99)
) -> dict[str, float | None]:
    if values.size == 0:
        return {f"p{int(q)}": None for q in qs}
    out = np.percentile(values, qs)
    return {f"p{int(q)}": float(v) for q, v in zip(qs, out, strict=True)}


def recommend(
    *,
    guardrail_tripped: str | None,
    srm_flagged: bool,
    n_control: int,
    n_treatment: int,
    min_outcomes: int,
    sequential_p: float | None,
    diff: float | None,
    alpha: float,
    higher_is_better: bool = True,
) -> tuple[str, str]:
    """(keep running | promote | roll back | investigate, why)."""
    if guardrail_tripped:
        return "roll back", guardrail_tripped
    if srm_flagged:
        return "investigate", "sample ratio mismatch: the split is not what was configured"
    if min(n_control, n_treatment) < min_outcomes:
        return (
            "keep running",
            f"{min(n_control, n_treatment)} outcomes in the smaller arm; {min_outcomes} needed",
        )
    if sequential_p is not None and diff is not None and sequential_p < alpha:
        if (diff > 0) == higher_is_better:
            return "promote", (
                f"treatment is better (always-valid p={sequential_p:.3g} < {alpha}, "
                "Holm-adjusted over the treatments, per key)"
            )
        return "roll back", (
            f"treatment is worse (always-valid p={sequential_p:.3g} < {alpha}, "
            "Holm-adjusted over the treatments, per key)"
        )
    return "keep running", "no significant difference yet (always-valid p-value, per key)"
