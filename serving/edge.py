"""The HTTP edge: request and response models, body limits, admin auth, and the one mapping from
error type to HTTP status.

Everything behind the edge raises typed errors (`shipyard.errors`), also across Ray: a
deployment's exception reaches the router as an instance of its own class. The handlers here are
the only place an error becomes a status, so a client's mistake is always a 4xx that names the
field, and a 5xx only ever means the server side failed.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.errors import (
    ArtifactError,
    ConfigError,
    Conflict,
    DataValidationError,
    DeployFailed,
    Forbidden,
    InvalidField,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidField, 422),
    (DataValidationError, 422),
    (InvalidInput, 400),
    (ConfigError, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (DeployFailed, 502),
    (ArtifactError, 503),
    (Unavailable, 503),
    (UpstreamTimeout, 504),
)


def status_of(err: BaseException) -> int:
    for cls, status in STATUS:
        if isinstance(err, cls):
            return status
    return 500


def error_body(message: str, **context: Any) -> dict[str, Any]:
    return {"error": message, **context}


# --- request and response models (they are also the OpenAPI document) --------------------------
Scalar = str | float | int | bool | None
Record = dict[str, Scalar]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Body):
    """One or more raw records: `instances` (a list, or one record) or `instance`."""

    instances: list[Record] | Record | None = Field(
        None, description="Raw records: feature name -> value (string, number, bool or null)."
    )
    instance: Record | None = Field(None, description="One raw record (instead of instances).")
    key: str | int | None = Field(
        None,
        description="Randomisation unit (e.g. a user id): the same key always gets the same "
        "variant. Also accepted as the X-Shipyard-Key header.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if self.instances is None and self.instance is None:
            raise ValueError("missing field 'instances' (a list of records) or 'instance'")
        if self.instances is not None and self.instance is not None:
            raise ValueError("give 'instances' or 'instance', not both")
        if isinstance(self.instances, list) and not self.instances:
            raise ValueError("instances must be a non-empty list of records")
        if isinstance(self.key, str) and not self.key:
            raise ValueError("key must be a non-empty string")
        return self

    def records(self) -> list[Record]:
        if self.instance is not None:
            return [self.instance]
        return self.instances if isinstance(self.instances, list) else [self.instances or {}]


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per record (label or value).")
    probabilities: list[Any] | None = Field(
        None, description="P(positive) per record (binary) or per class (multiclass)."
    )
    variant: str
    model_version: str
    request_id: str = Field(description="Quote it in POST /feedback.")


class ExplainResponse(BaseModel):
    contributions: dict[str, Any] = Field(description="Per-feature SHAP contributions.")
    base_value: Any
    margin: Any
    output: str = Field(description="'log-odds' or 'prediction'.")
    variant: str
    model_version: str


# Strict: "yes" or "1" are not outcomes; true/false count as 1/0.
Outcome = Annotated[
    StrictBool | StrictInt | Annotated[float, Field(strict=True, allow_inf_nan=False)],
    Field(description="The outcome: a number, or true/false."),
]


class FeedbackRequest(Body):
    request_id: str = Field(min_length=1, description="The request_id a /predict returned.")
    outcome: Outcome


class FeedbackResponse(BaseModel):
    request_id: str
    joined: bool = Field(description="False: the request is not known yet; kept as pending.")
    status: str | None = None
    variant: str | None = None
    model_version: int | None = None
    prediction: float | None = None


class Decision(Body):
    by: str = Field("admin", min_length=1, description="Who decides (kept in the request).")
    reason: str = Field("", description="Why (required to reject).")


class TrafficState(BaseModel):
    config_version: int
    weights: dict[str, float]
    shadow: dict[str, float]
    control: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the field and what is accepted.")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 409, 413, 415, 422, 503)
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **{status: {"model": ErrorResponse} for status in (401, 403)},
}


# --- validation messages -----------------------------------------------------------------------
def describe(errors: list[Any], accepted: list[str] | None = None) -> str:
    """Pydantic errors -> one line per field: 'instances.0.income: <what is wrong> (got ...)'."""
    parts = []
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc) or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            return f"request body is not valid JSON: {e.get('ctx', {}).get('error', msg)}"
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        shown = "" if e.get("type") in ("missing", "extra_forbidden") or isinstance(got, dict) else (
            f" (got {json.dumps(got, default=str)[:80]})"
        )  # fmt: skip
        parts.append(f"{where}: {msg}{shown}")
    line = "; ".join(parts)
    if accepted:
        line += f"; accepted fields: {', '.join(accepted)}"
    return line


def install_error_handlers(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """The one place where errors become HTTP answers. `bodies`: route path -> request model,
    so that a validation error can say which fields the route accepts."""
    from shipyard.errors import ShipyardError

    async def on_shipyard(request: Request, err: Exception) -> JSONResponse:
        cause = getattr(err, "cause", err)  # a RayTaskError carries the original as `cause`
        message = getattr(cause, "message", str(cause))
        context = getattr(err, "context", None) or getattr(cause, "context", None) or {}
        status = status_of(err)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, message)
        return JSONResponse(error_body(message, **context), status_code=status)

    async def on_validation(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        route = request.scope.get("route")
        model = bodies.get(getattr(route, "path", ""))
        accepted = list(model.model_fields) if model is not None else None
        errors = list(err.errors())
        status = 400 if errors and errors[0].get("type") == "json_invalid" else 422
        return JSONResponse(error_body(describe(errors, accepted)), status_code=status)

    app.add_exception_handler(ShipyardError, on_shipyard)
    app.add_exception_handler(RequestValidationError, on_validation)


# --- body limit and content type --------------------------------------------------------------
JSON_TYPES = (b"application/json",)


class BodyGuard:
    """ASGI middleware in front of every route:

    - a request body over `max_bytes` is refused with 413 before it is read whole, whether it
      declares a Content-Length or comes chunked (bytes are counted as they arrive and reading
      stops at the limit);
    - bodies are JSON: a body sent without a Content-Type is read as JSON, and any other type
      (a form, text/plain: what a browser page on another site can send) is refused with 415.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, 413, f"request body is {int(declared)} bytes")
            return
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind and kind not in JSON_TYPES and not kind.endswith(b"+json"):
            if scope["method"] in ("POST", "PUT", "PATCH"):
                shown = kind.decode("latin-1")[:60]
                await self._refuse(send, 415, f"Content-Type {shown!r}: send application/json")
                return
        elif not kind:  # curl -d without -H, or a bare POST: read it as JSON
            scope = {**scope, "headers": [*scope.get("headers", []),
                                          (b"content-type", b"application/json")]}  # fmt: skip
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, 413, f"request body exceeds {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int, what: str) -> None:
        if status == 413:
            what += f"; limits.max_body_bytes={self.max_bytes}"
        body = json.dumps(error_body(what)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
