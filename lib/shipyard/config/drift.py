"""How drift windows are cut and judged: the statistics' settings, one definition and one set of
defaults, which the serving config's `drift` section extends and `DriftMonitor` judges with."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from shipyard.config.base import Strict


class DriftSettings(Strict):
    """How windows are cut and judged (the statistics' part of the serving config's `drift`)."""

    window_rows: PositiveInt = Field(
        5000, description="A window closes after this many rows (or window_seconds)."
    )
    window_seconds: PositiveFloat = Field(
        300.0, description="A window closes after this long (if it holds min_rows)."
    )
    min_rows: PositiveInt = Field(
        500, description="Rows a window closed by time needs to be judged (else it goes on)."
    )
    alpha: float = Field(
        0.01, gt=0.0, lt=0.5, description="Significance after the multiple-testing correction."
    )
    correction: Literal["holm", "bh"] = Field(
        "holm",
        description="Across the features of a window: holm (family-wise error) or bh "
        "(Benjamini-Hochberg, false discovery rate).",
    )
    effect: Literal["psi", "js"] = Field(
        "psi", description="Effect size that must also pass its threshold: psi or js."
    )
    psi_threshold: PositiveFloat = Field(
        0.02, description="PSI a drifted feature must reach (0.25 sd mean shift ~ 0.06)."
    )
    js_threshold: PositiveFloat = Field(
        0.06, description="Jensen-Shannon distance (base 2) a drifted feature must reach."
    )
    missing_rate_increase: PositiveFloat = Field(
        0.05, description="Missing-rate rise over the reference that is drift (absolute)."
    )
    unseen_rate: PositiveFloat = Field(
        0.01, description="Share of values in no training category that is drift."
    )
    out_of_range_rate: PositiveFloat = Field(
        0.01, description="Share of values outside the training range that is drift."
    )
    type_error_rate: PositiveFloat = Field(
        0.01, description="Share of records refused for a field's type that is drift."
    )
    resolve_after: PositiveInt = Field(
        2, description="Clean windows in a row before a drift counts as resolved."
    )
