"""Guardrails: thresholds on what a treatment did since the split last changed, against control
(its error rate, its p99 latency). No test: a breach is an observed difference past a bound,
which rolls the treatment back (`Experiment.check_guardrails`)."""

from __future__ import annotations

import numpy as np

from shipyard.ab.ledger import VariantStats
from shipyard.config.serving import Guardrails


def breach(g: Guardrails, ctl: VariantStats, trt: VariantStats) -> str | None:
    """Why the treatment breaches its guardrails against control, or None."""
    if min(ctl.epoch_requests, trt.epoch_requests) < g.min_requests:
        return None
    err_c = ctl.epoch_errors / ctl.epoch_requests
    err_t = trt.epoch_errors / trt.epoch_requests
    if err_t - err_c > g.max_error_rate_delta:
        return (
            f"error rate {err_t:.2%} vs control {err_c:.2%} exceeds "
            f"guardrails.max_error_rate_delta={g.max_error_rate_delta:.2%} (threshold on "
            f"the observed difference, no test; over {trt.epoch_requests} treatment and "
            f"{ctl.epoch_requests} control requests since the split last changed)"
        )
    lat_c, lat_t = ctl.latency.values(), trt.latency.values()
    if min(lat_c.size, lat_t.size) >= max(g.min_requests, g.min_latency_samples):
        p99_c = float(np.percentile(lat_c, 99))
        p99_t = float(np.percentile(lat_t, 99))
        if p99_t > g.max_p99_ratio * p99_c and p99_t - p99_c > g.min_p99_delta_ms:
            return (
                f"p99 latency {p99_t:.1f} ms vs control {p99_c:.1f} ms exceeds "
                f"guardrails.max_p99_ratio={g.max_p99_ratio} "
                f"(and min_p99_delta_ms={g.min_p99_delta_ms}; threshold on the observed "
                f"p99s, no test; over the last {lat_t.size} treatment and {lat_c.size} "
                "control latencies)"
            )
    return None
