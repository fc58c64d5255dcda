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
import math
import os
import re
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.contract import PROXY_MAX_BODY_DEFAULT, PROXY_MAX_BODY_ENV
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
    ShipyardError,
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


RETRY_AFTER_S = 5  # a 503 says when to try again: a replica is usually back within seconds


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
# A randomisation key: a user id, order id... Bounded, since every key is hashed and counted.
Key = (
    Annotated[str, Field(min_length=1, max_length=256)]
    | Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
)
REQUEST_ID = r"^[A-Za-z0-9_-]{1,64}$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Body):
    """One or more raw records: `instances` (a list, or one record) or `instance`."""

    instances: list[Record] | Record | None = Field(
        None, description="Raw records: feature name -> value (string, number, bool or null)."
    )
    instance: Record | None = Field(None, description="One raw record (instead of instances).")
    key: Key | None = Field(
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


# Strict: "yes" or "1" are not outcomes; true/false count as 1/0; a number must be a finite
# float64 (an integer too large for one is refused, not overflowed).
Outcome = Annotated[
    StrictBool | Annotated[float, Field(strict=True, allow_inf_nan=False)],
    Field(description="The outcome: a finite number, or true/false."),
]


class FeedbackRequest(Body):
    request_id: str = Field(
        pattern=REQUEST_ID,
        description="The request_id a /predict returned (1-64 letters, digits, '-' or '_').",
    )
    outcome: Outcome


class FeedbackResponse(BaseModel):
    request_id: str
    joined: bool = Field(
        description="True: counted for the variant that answered. False with status pending "
        "(HTTP 202): the request is not known yet, held until it arrives; with status "
        "not_counted: the request failed or another variant answered it, so the outcome counts "
        "for none (kept, and GET /ab counts it as feedback_not_counted)."
    )
    status: str | None = None
    variant: str | None = None
    model_version: int | None = None
    prediction: float | None = None


class Decision(Body):
    by: str = Field(
        "admin", min_length=1, max_length=200, description="Who decides (kept in the request)."
    )
    reason: str = Field("", max_length=2000, description="Why (required to reject).")


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
DATA_ERRORS = ADMIN_ERRORS  # data routes need an API key once keys are set


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

    async def on_shipyard(request: Request, err: Exception) -> JSONResponse:
        cause = getattr(err, "cause", err)  # a RayTaskError carries the original as `cause`
        message = getattr(cause, "message", str(cause))
        context = getattr(err, "context", None) or getattr(cause, "context", None) or {}
        status = status_of(err)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, message)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse(error_body(message, **context), status_code=status, headers=headers)

    async def on_validation(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        route = request.scope.get("route")
        model = bodies.get(getattr(route, "path", ""))
        accepted = list(model.model_fields) if model is not None else None
        errors = list(err.errors())
        status = 400 if errors and errors[0].get("type") == "json_invalid" else 422
        return JSONResponse(error_body(describe(errors, accepted)), status_code=status)

    async def on_http(request: Request, err: Exception) -> JSONResponse:
        """FastAPI's own answers (no such route, wrong method) in the same shape."""
        assert isinstance(err, HTTPException)
        message = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(error_body(message), err.status_code, headers=err.headers)

    async def on_unexpected(request: Request, err: Exception) -> JSONResponse:
        """A bug: still a JSON answer, and logged with its traceback."""
        logger.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse(error_body("internal error; it has been logged"), 500)

    app.add_exception_handler(ShipyardError, on_shipyard)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


# --- what a JSON body may hold ---------------------------------------------------------------
MAX_DEPTH = 16  # containers inside containers; the deepest body any route takes has 3
MAX_INT_DIGITS = 4300  # Python's own limit on reading an integer literal
_SURROGATE = re.compile("[\ud800-\udfff]")


class _BigInt:
    """An integer literal too long to read; reported with its place in the body."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int(literal: str) -> int | _BigInt:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= MAX_INT_DIGITS else _BigInt(digits)


def check_json(body: bytes) -> None:
    """Refuse what a JSON body must not hold, naming where it is: malformed JSON or UTF-8 (400),
    nesting deeper than MAX_DEPTH (400), and values no route can take (422): NaN and Infinity
    (not JSON, though Python reads them), numbers beyond float64, integer literals over
    MAX_INT_DIGITS digits, and strings with lone surrogates (not Unicode text)."""
    try:
        doc = json.loads(body, parse_int=_int, parse_constant=float)
    except RecursionError:
        raise InvalidInput(f"request body: nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"request body is not valid JSON: {str(err)[:200]}") from None
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidInput(f"request body: nesting deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str) and _SURROGATE.search(k):
                    raise InvalidField(f"{where or 'body'}: a key is not valid Unicode text "
                                       "(a lone surrogate escape such as \\ud800)")  # fmt: skip
                stack.append((v, f"{where}.{k}" if where else str(k), depth + 1))
        elif isinstance(value, _BigInt):
            raise InvalidField(f"{where}: an integer of {value.digits} digits; numbers must be "
                               "finite float64 values (|x| <= 1.8e308)")  # fmt: skip
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidField(f"{where}: {value} is not a finite number; JSON numbers must be "
                               "finite (send null for a missing value)")  # fmt: skip
        elif isinstance(value, str) and _SURROGATE.search(value):
            raise InvalidField(f"{where}: not valid Unicode text (a lone surrogate escape such "
                               "as \\ud800)")  # fmt: skip


# --- body limit and content type --------------------------------------------------------------
JSON_TYPES = (b"application/json",)


class BodyGuard:
    """ASGI middleware in front of every route (`json_only=False`: the size limit alone, as
    Serve's HTTP proxies run it, see `proxy_middlewares`):

    - a request body over `max_bytes` is refused with 413 before it is read whole, whether it
      declares a Content-Length or comes chunked (bytes are counted as they arrive and reading
      stops at the limit);
    - bodies are JSON: a body sent without a Content-Type is read as JSON, and any other type
      (a form, text/plain: what a browser page on another site can send) is refused with 415;
    - a body is read once here to refuse what no route can take (`check_json`), so the routes'
      own parsing never meets a value that would fail it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_only: bool = True) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_only = json_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, 413, f"request body is {int(declared)} bytes")
            return
        if self.json_only:
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
        if self.json_only and body.strip():
            try:
                check_json(body)
            except ShipyardError as err:
                await self._refuse(send, status_of(err), err.message)
                return
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
            what += (f"; limits.max_body_bytes={self.max_bytes}" if self.json_only
                     else f"; {PROXY_MAX_BODY_ENV}={self.max_bytes} on the serving nodes")  # fmt: skip
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


def proxy_middlewares() -> list[Any]:
    """Serve's HTTP proxies call this at start (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, set by
    `ray_env` and the cluster configs): the body limit, enforced where the bytes arrive. Serve's
    proxy otherwise buffers a request's whole body, and the replica fetches it all, before the
    app's own limit can answer; at the proxy, reading stops at the limit."""
    from starlette.middleware import Middleware

    limit = int(os.environ.get(PROXY_MAX_BODY_ENV) or PROXY_MAX_BODY_DEFAULT)
    return [Middleware(BodyGuard, max_bytes=limit, json_only=False)]
