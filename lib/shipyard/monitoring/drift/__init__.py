"""Drift statistics on fixed-edge counts: live windows against a version's reference profile.

Everything here is pure logic (no Ray): the drift actors in `serving/` wrap `DriftMonitor`. The
package's modules: `statistics` (the tests and effect sizes on counts), `reference` (a version's
bins and training counts), `counts` (a window's counts on them), `monitor` (verdicts, windows,
episodes); their public names are importable from the package itself.

- A window's state is counts on the reference's own bins (numeric: the training quantile edges;
  categorical: the training categories plus an "unseen" bucket), plus missing, out-of-range and
  type-error counts. Counts merge exactly by addition, so replicas, actors and windows combine.
- Per window and feature: PSI and Jensen-Shannon distance (effect sizes) and a chi-square test of
  homogeneity on the binned counts (reference vs window). The features of a window are one family,
  corrected with Holm (family-wise error) or Benjamini-Hochberg (false discovery rate). A feature's
  distribution drifts only when its corrected p-value is below `alpha` AND its effect size is at
  least its threshold: a big sample makes every trivial shift significant; the effect gate stops it
  from alarming.
- Data quality is drift of its own kind: a missing-rate jump, unseen categories, values outside the
  training range and type errors, each with a rate threshold (and, for the missing rate, a test).
"""

from shipyard.monitoring.drift.counts import Binner, FeatureCounts, WindowCounts
from shipyard.monitoring.drift.monitor import DriftMonitor, judge_window
from shipyard.monitoring.drift.reference import (
    PREDICTION,
    FeatureReference,
    Reference,
    profile_of_frame,
)
from shipyard.monitoring.drift.statistics import (
    chi2_homogeneity,
    js_distance,
    pool_sparse_bins,
    proportion_increase_p,
    psi,
)

__all__ = [
    "PREDICTION",
    "Binner",
    "DriftMonitor",
    "FeatureCounts",
    "FeatureReference",
    "Reference",
    "WindowCounts",
    "chi2_homogeneity",
    "js_distance",
    "judge_window",
    "pool_sparse_bins",
    "profile_of_frame",
    "proportion_increase_p",
    "psi",
]
