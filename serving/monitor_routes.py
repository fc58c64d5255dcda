"""The monitoring routes: the live variants and their health, drift verdicts per variant, a
variant's drift report (HTML), and the retraining requests. Each asks an actor with a deadline;
one that does not answer is reported unavailable in a listing, and a route none of whose actors
answers (or whose one actor does not) is a 503, never a 500 nor a 200 that hides the failure. A
route whose feature is off is a 404 that says so."""

# No `from __future__ import annotations`: FastAPI resolves route signatures at runtime.

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from serving.admin import RETRAINING_OFF
from serving.calls import within
from serving.pool import VariantPool
from shipyard.ab.routing import Allocation
from shipyard.config.serving import ServingConfig
from shipyard.errors import NotFound, Unavailable

logger = logging.getLogger(__name__)


def replica_counts() -> dict[str, int]:
    """Running replicas per deployment of this app, from the Serve controller."""
    try:
        app = serve.get_replica_context().app_name
        status = serve.status().applications[app]
        return {
            name: int(sum(n for state, n in d.replica_states.items() if state == "RUNNING"))
            for name, d in status.deployments.items()
        }
    except Exception as err:  # informational only
        logger.info("replica counts unavailable: %s", err)
        return {}


def health_error(info: Any) -> str | None:
    if isinstance(info, BaseException):
        return "no answer from the variant (restarting?)"
    error = info.get("error")
    return None if error is None else str(error)


class MonitorRoutes:
    def __init__(
        self,
        cfg: ServingConfig,
        drifts: dict[str, Any],
        retrain: Any,
        pool: VariantPool,
        versions: dict[str, int],
        table: Callable[[], tuple[dict[str, Any], Allocation | None]],
    ) -> None:
        self.cfg = cfg
        self.drifts = drifts  # variant -> its drift actor's handle
        self.retrain = retrain  # the retrainer's handle, or None when on_drift is alert
        self.pool = pool
        self.versions = versions
        self.table = table  # the router's traffic table now: (snapshot, allocation)

    async def variants(self) -> JSONResponse:
        """Live variants: weight, traffic share, shadow, replicas, health, whether routed."""
        snap, allocation = self.table()
        if allocation is None:
            raise Unavailable("the router has no traffic table yet; retry shortly")
        shares = allocation.shares()
        infos = await self.pool.infos(list(self.versions))
        replicas = replica_counts()
        out = [
            {
                "variant": name,
                "model_version": self.versions[name],
                "weight": snap["weights"].get(name, 0.0),
                "traffic_share": shares.get(name, 0.0),
                "shadow": snap["shadow"].get(name, 0.0),
                "control": name == snap["control"],
                "replicas": replicas.get(f"variant-{name}"),
                "loaded_at": None if isinstance(info, BaseException) else info["loaded_at"],
                "healthy": not isinstance(info, BaseException) and info.get("loaded", True),
                "error": health_error(info),
                "routed": name not in self.pool.down,
            }
            for name, info in zip(self.versions, infos, strict=True)
        ]
        return JSONResponse(
            {
                "model": self.cfg.model,
                "config_version": snap["config_version"],
                "control": snap["control"],
                "allocation": snap["allocation"],
                "variants": out,
            }
        )

    async def drift(self) -> JSONResponse:
        """Per variant: the last closed window's verdict per feature (score, p-value, drifted,
        window size, since when) and an overall `drifted`."""
        if not self.drifts:
            raise NotFound("drift actors are off (drift.enabled: false)")
        names = list(self.drifts)
        probe = self.cfg.limits.probe_timeout_s
        answers = await asyncio.gather(
            *[within(self.drifts[n].status.remote(), probe, "drift actor") for n in names],
            return_exceptions=True,
        )
        if all(isinstance(a, BaseException) for a in answers):
            raise Unavailable(
                f"no drift actor answered within limits.probe_timeout_s={probe} s (restarting?); "
                "retry shortly"
            )
        out: dict[str, Any] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                logger.warning("drift actor of %s unavailable: %s", name, answer)
                out[name] = {"available": False, "error": "drift actor unavailable (restarting?)"}
            else:
                out[name] = {"available": True, **answer}
        return JSONResponse({"model": self.cfg.model, "variants": out})

    async def drift_report(self, variant: str) -> HTMLResponse:
        """HTML: reference vs current histograms of the variant's drifted features."""
        from shipyard.monitoring.report import render_html

        if variant not in self.drifts:
            raise NotFound(
                f"no drift actor for variant {variant!r}; variants: {sorted(self.drifts)}"
            )
        try:
            response = self.drifts[variant].report_data.remote()  # away: a 503 at once
            data = await within(response, self.cfg.limits.probe_timeout_s, "drift actor")
        except Exception as err:
            logger.warning("drift report of %s unavailable: %s", variant, err)
            raise Unavailable(f"drift actor of {variant!r} unavailable; retry shortly") from None
        return HTMLResponse(render_html(data))

    async def retrain_requests(self) -> JSONResponse:
        """Retraining requests (newest first) and the policy they follow."""
        if self.retrain is None:
            raise NotFound(RETRAINING_OFF)
        probe = self.cfg.limits.probe_timeout_s
        return JSONResponse(await within(self.retrain.report.remote(), probe, "retrainer"))
