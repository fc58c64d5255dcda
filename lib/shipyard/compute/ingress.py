"""Where the serving app answers without Serve's proxy: the router replicas' own HTTP ports.

Shipyard runs Serve throughput-optimised (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: `make demo`, the
cluster configs, the tests), which in Ray 2.60 turns on *direct ingress*: every replica of the
app's ingress deployment (the router) serves HTTP on a port of its own (from 30000,
`RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`), bound to `http_options.host`, beside the proxy on the
head node. A request sent there skips the proxy's hop and the router's actor call back to the
proxy for the body: on 2 cores, 17 ms of CPU a request through the proxy against 3 ms direct
(docs/serving.md, "Serve and A/B test"). Serve publishes the ports as the application's target groups
(`GET /api/serve/applications/` on the dashboard); a load balancer in front of them (Serve's
HAProxy mode, or the cloud's) is what spreads clients over the replicas on a cluster. A replica
started again (a redeploy, a lost node) may get another port: ask again.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

ALL_INTERFACES = ("0.0.0.0", "::", "")


def ingress_urls(details: dict[str, Any], app: str) -> list[str]:
    """Base URLs of `app`'s ingress replicas, from Serve's instance details (the REST answer, or
    the controller's own dict): the replica's node address when Serve binds all interfaces, else
    the bound host."""
    bound = str((details.get("http_options") or {}).get("host") or "")
    urls = []
    for group in details.get("target_groups") or []:
        protocol = group.get("protocol")  # "HTTP" in the REST answer, an enum from the controller
        if group.get("app_name") != app or str(getattr(protocol, "value", protocol)) != "HTTP":
            continue
        prefix = str(group.get("route_prefix") or "/").rstrip("/")
        for target in group.get("targets") or []:
            host = target["ip"] if bound in ALL_INTERFACES else bound
            urls.append(f"http://{host}:{int(target['port'])}{prefix}")
    return sorted(urls)


def serve_details(dashboard: str, timeout_s: float = 10) -> dict[str, Any]:
    """Serve's instance details from the dashboard's REST API (what `serve status` reads)."""
    url = f"{dashboard.rstrip('/')}/api/serve/applications/"
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def direct_urls(dashboard: str, app: str = "shipyard") -> list[str]:
    """The app's direct-ingress URLs on a running cluster (empty: not deployed yet, or direct
    ingress off)."""
    return ingress_urls(serve_details(dashboard), app)
