"""The admin routes: traffic changes (weights, promote, rollback), which the experiment store
makes durable before the router applies them, and a person's decision on a retrained version.
They sit behind the admin token (`serving.auth`); the route table is `serving.routes`."""

# No `from __future__ import annotations`: FastAPI resolves route signatures at runtime.

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from serving.calls import awaited
from serving.edge import Decision
from serving.store_client import StoreClient
from shipyard.config.serving import TrafficUpdate
from shipyard.errors import InvalidField, NotFound

# The answer of every /retrain route while retraining is off: the same 404 as an unknown id.
RETRAINING_OFF = "retraining is off (on_drift: alert); no retraining request exists"


class Admin:
    def __init__(
        self, store: StoreClient, apply: Callable[[dict[str, Any]], None], retrain: Any
    ) -> None:
        self.store = store
        self.apply = apply  # the router takes the store's new table at once
        self.retrain = retrain  # the retrainer's handle, or None when on_drift is alert

    async def put_variants(self, body: TrafficUpdate) -> JSONResponse:
        return self._traffic(await self.store.set_traffic(body.model_dump(), "PUT /variants"))

    async def promote(self, name: str) -> JSONResponse:
        return self._traffic(await self.store.promote(name, "admin"))

    async def rollback(self, name: str) -> JSONResponse:
        reason = "rolled back by an operator"
        return self._traffic(await self.store.rollback(name, reason, "admin"))

    def _traffic(self, snapshot: dict[str, Any]) -> JSONResponse:
        self.apply(snapshot)
        return JSONResponse(
            {k: snapshot[k] for k in ("config_version", "weights", "shadow", "control")}
        )

    async def retrain_decide(
        self, request_id: str, action: str, body: Decision | None = None
    ) -> JSONResponse:
        """A person's decision on a retrained version: approve (it joins live traffic as a
        canary) or reject."""
        if action not in ("approve", "reject"):
            raise NotFound(f"unknown action {action!r}; accepted: approve, reject")
        if self.retrain is None:
            raise NotFound(RETRAINING_OFF)
        decision = body or Decision()
        if action == "approve":
            answer = await awaited(self.retrain.approve.remote(request_id, decision.by))
        else:
            if not decision.reason:
                raise InvalidField("reason: say why the version is rejected")
            answer = await awaited(
                self.retrain.reject.remote(request_id, decision.by, decision.reason)
            )
        return JSONResponse(answer)
