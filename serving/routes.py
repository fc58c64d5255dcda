"""The route table: every route of the serving app, its method, model, errors and auth, in one
place. The handlers are the router's (the request path), `serving.admin`'s and
`serving.monitor_routes`'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from serving.admin import Admin
from serving.auth import Auth
from serving.edge import (
    ADMIN_ERRORS,
    DATA_ERRORS,
    BodyGuard,
    Decision,
    ExplainResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    TrafficState,
    install_error_handlers,
)
from serving.monitor_routes import MonitorRoutes
from shipyard.config.serving import TrafficUpdate


class Handlers(Protocol):
    """The router's routes, bound methods whose signatures FastAPI reads."""

    @property
    def predict(self) -> Callable[..., Any]: ...

    @property
    def explain(self) -> Callable[..., Any]: ...

    @property
    def feedback(self) -> Callable[..., Any]: ...

    @property
    def ab(self) -> Callable[..., Any]: ...

    @property
    def variants(self) -> Callable[..., Any]: ...

    @property
    def healthz(self) -> Callable[..., Any]: ...


def build_api(
    handlers: Handlers,
    admin_routes: Admin,
    monitor: MonitorRoutes,
    auth: Auth,
    max_body_bytes: int,
) -> FastAPI:
    api = FastAPI(
        title="Shipyard",
        description="Several model versions behind one endpoint: weighted A/B traffic, "
        "sticky keys, shadows, guardrails, drift.",
        version="1",
    )
    install_error_handlers(
        api,
        {"/predict": PredictRequest, "/explain": PredictRequest, "/feedback": FeedbackRequest,
         "/variants": TrafficUpdate, "/retrain/{request_id}/{action}": Decision},
    )  # fmt: skip
    api.add_middleware(BodyGuard, max_bytes=max_body_bytes)
    admin = [Depends(auth.require_admin)]
    data = [Depends(auth.require_api_key)]
    add = api.add_api_route
    add(
        "/predict",
        handlers.predict,
        methods=["POST"],
        response_model=PredictResponse,
        responses=DATA_ERRORS,
        dependencies=data,
        summary="Predict with the variant the key is routed to",
    )
    add(
        "/explain",
        handlers.explain,
        methods=["POST"],
        response_model=ExplainResponse,
        responses=DATA_ERRORS,
        dependencies=data,
        summary="Per-feature contributions for one record",
    )
    add(
        "/feedback",
        handlers.feedback,
        methods=["POST"],
        response_model=FeedbackResponse,
        responses=DATA_ERRORS,
        dependencies=data,
        summary="The outcome of an earlier prediction (A/B statistics)",
    )
    add("/ab", handlers.ab, methods=["GET"], dependencies=data, summary="The A/B report")
    add(
        "/variants",
        handlers.variants,
        methods=["GET"],
        dependencies=data,
        summary="Live variants and weights",
    )
    add(
        "/variants",
        admin_routes.put_variants,
        methods=["PUT"],
        response_model=TrafficState,
        responses=ADMIN_ERRORS,
        dependencies=admin,
        summary="Change weights (admin)",
    )
    add(
        "/variants/{name}/promote",
        admin_routes.promote,
        methods=["POST"],
        response_model=TrafficState,
        responses=ADMIN_ERRORS,
        dependencies=admin,
        summary="Make a variant the control with all live traffic (admin)",
    )
    add(
        "/variants/{name}/rollback",
        admin_routes.rollback,
        methods=["POST"],
        response_model=TrafficState,
        responses=ADMIN_ERRORS,
        dependencies=admin,
        summary="Take a variant's live traffic away (admin)",
    )
    add(
        "/drift",
        monitor.drift,
        methods=["GET"],
        dependencies=data,
        summary="Drift verdicts per variant",
    )
    add(
        "/drift/{variant}/report",
        monitor.drift_report,
        methods=["GET"],
        response_class=HTMLResponse,
        responses=DATA_ERRORS,
        dependencies=data,
        summary="Drift histograms (HTML)",
    )
    add(
        "/retrain",
        monitor.retrain_requests,
        methods=["GET"],
        dependencies=data,
        summary="Retraining requests",
    )
    add(
        "/retrain/{request_id}/{action}",
        admin_routes.retrain_decide,
        methods=["POST"],
        responses=ADMIN_ERRORS,
        dependencies=admin,
        summary="Approve or reject a retrained version (admin)",
    )
    add("/healthz", handlers.healthz, methods=["GET"], summary="Ready to route")
    return api  # fmt: skip
