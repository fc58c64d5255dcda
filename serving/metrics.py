"""The router's Prometheus metrics (Ray Serve's metric classes), or no-op stand-ins outside Ray
(unit tests drive the router without a cluster)."""

from __future__ import annotations

from typing import Any


class NoMetric:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...


class RouterMetrics:
    """Requests by variant and status, latency by variant, shadow outcomes, live weights."""

    requests: Any
    latency: Any
    shadow: Any
    weight: Any

    def __init__(self) -> None:
        import ray

        if not ray.is_initialized():  # a plain object (unit tests): metrics go nowhere
            self.requests = self.latency = self.shadow = self.weight = NoMetric()
            return
        from ray.serve import metrics

        # Ray types tag_keys as tuple[str]; any tuple of names is accepted.
        deployment_tags: Any = ("model", "variant")
        status_tags: Any = ("model", "variant", "status")
        shadow_tags: Any = ("model", "variant", "outcome")

        self.requests = metrics.Counter(
            "shipyard_requests",
            description="Predict requests by variant and HTTP status.",
            tag_keys=status_tags,
        )
        self.latency = metrics.Histogram(
            "shipyard_request_latency_ms",
            description="Predict latency at the router, by variant (ms).",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
            tag_keys=deployment_tags,
        )
        self.shadow = metrics.Counter(
            "shipyard_shadow_requests",
            description="Mirrored requests by shadow variant and outcome.",
            tag_keys=shadow_tags,
        )
        self.weight = metrics.Gauge(
            "shipyard_variant_weight",
            description="Live traffic share of each variant (0-1).",
            tag_keys=deployment_tags,
        )
