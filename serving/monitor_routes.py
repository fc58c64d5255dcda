"""The monitoring routes: drift verdicts per variant, a variant's drift report (HTML), and the
retraining requests. Each asks an actor with a deadline; one that does not answer is reported
unavailable (503 for the one the request is about), never a 500."""

# No `from __future__ import annotations`: FastAPI resolves route signatures at runtime.

import asyncio
import logging
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse

from serving.calls import within
from shipyard.config.serving import ServingConfig
from shipyard.errors import NotFound, Unavailable

logger = logging.getLogger(__name__)


class MonitorRoutes:
    def __init__(self, cfg: ServingConfig, drifts: dict[str, Any], retrain: Any) -> None:
        self.cfg = cfg
        self.drifts = drifts  # variant -> its drift actor's handle
        self.retrain = retrain  # the retrainer's handle, or None when on_drift is alert

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
            response = self.drifts[variant].report_data.remote()
            data = await within(response, self.cfg.limits.timeout_s, "drift actor")
        except Exception as err:
            logger.warning("drift report of %s unavailable: %s", variant, err)
            raise Unavailable(f"drift actor of {variant!r} unavailable; retry shortly") from None
        return HTMLResponse(render_html(data))

    async def retrain_requests(self) -> JSONResponse:
        """Retraining requests (newest first) and the policy they follow."""
        if self.retrain is None:
            return JSONResponse({"model": self.cfg.model, "on_drift": "alert", "requests": []})
        probe = self.cfg.limits.probe_timeout_s
        return JSONResponse(await within(self.retrain.report.remote(), probe, "retrainer"))
