"""Multiple-testing corrections shared by every verdict that tests a family: slices and
fairness gaps at training time, treatments in an A/B test, the features of a drift window."""

from __future__ import annotations

from collections.abc import Sequence

from scipy import stats


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: family-wise error control under any dependence."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values: false discovery rate control (independent or
    positively dependent tests)."""
    if not p_values:
        return []
    return [float(x) for x in stats.false_discovery_control(list(p_values), method="bh")]


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """`holm`, `bh` (Benjamini-Hochberg), `bonferroni` or `none`."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    if method == "none":
        return list(p_values)
    raise ValueError(f"unknown correction {method!r}; accepted: holm, bh, bonferroni, none")
