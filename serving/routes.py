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
    json_data = {"responses": DATA_ERRORS, "dependencies": data}
    json_admin = {"response_model": TrafficState, "responses": ADMIN_ERRORS, "dependencies": admin}
    # path, method, handler, options, summary
    table: list[tuple[str, str, Callable[..., Any], dict[str, Any], str]] = [
        ("/predict", "POST", handlers.predict, {**json_data, "response_model": PredictResponse},
         "Predict with the variant the key is routed to"),
        ("/explain", "POST", handlers.explain, {**json_data, "response_model": ExplainResponse},
         "Per-feature contributions for one record"),
        ("/feedback", "POST", handlers.feedback, {**json_data, "response_model": FeedbackResponse},
         "The outcome of an earlier prediction (A/B statistics)"),
        ("/ab", "GET", handlers.ab, {"dependencies": data}, "The A/B report"),
        ("/variants", "GET", monitor.variants, {"dependencies": data}, "Live variants and weights"),
        ("/variants", "PUT", admin_routes.put_variants, json_admin, "Change weights (admin)"),
        ("/variants/{name}/promote", "POST", admin_routes.promote, json_admin,
         "Make a variant the control with all live traffic (admin)"),
        ("/variants/{name}/rollback", "POST", admin_routes.rollback, json_admin,
         "Take a variant's live traffic away (admin)"),
        ("/drift", "GET", monitor.drift, {"dependencies": data}, "Drift verdicts per variant"),
        ("/drift/{variant}/report", "GET", monitor.drift_report,
         {**json_data, "response_class": HTMLResponse}, "Drift histograms (HTML)"),
        ("/retrain", "GET", monitor.retrain_requests, {"dependencies": data},
         "Retraining requests"),
        ("/retrain/{request_id}/{action}", "POST", admin_routes.retrain_decide,
         {"responses": ADMIN_ERRORS, "dependencies": admin},
         "Approve or reject a retrained version (admin)"),
        ("/healthz", "GET", handlers.healthz, {}, "Ready to route"),
    ]  # fmt: skip
    for path, method, handler, options, summary in table:
        api.add_api_route(path, handler, methods=[method], summary=summary, **options)
    return api
