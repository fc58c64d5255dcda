"""Who may call what: admin routes need the admin token (off unless it is set), data routes an
API key once keys are set. Both are FastAPI dependencies of the route table (`serving.routes`).
"""

# No `from __future__ import annotations`: FastAPI resolves dependency signatures at runtime.

import hmac
import os
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from shipyard.config.serving import ServingConfig
from shipyard.errors import Forbidden, NotFound, Unauthorized

bearer = HTTPBearer(auto_error=False, description="The admin token (admin_token_env).")
api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key (api_keys_env), when set."
)


class Auth:
    """The admin token and the API keys, read from the environment the config names."""

    def __init__(self, cfg: ServingConfig) -> None:
        self.admin_token_env, self.api_keys_env = cfg.admin_token_env, cfg.api_keys_env
        self.token = os.environ.get(cfg.admin_token_env) or None
        keys = os.environ.get(cfg.api_keys_env, "")
        self.api_keys = [k.strip().encode() for k in keys.split(",") if k.strip()]

    async def require_admin(
        self, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        """Admin routes: off unless the token env is set; then a Bearer token must match."""
        if self.token is None:
            raise NotFound(f"admin routes are off: set {self.admin_token_env} on the serving nodes")
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("admin route: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(creds.credentials.encode(), self.token.encode()):
            raise Forbidden("admin route: wrong token")

    async def require_api_key(self, key: Annotated[str | None, Depends(api_key)]) -> None:
        """Data routes: open unless API keys are set; then X-API-Key must be one of them."""
        if not self.api_keys:
            return
        if not key:
            raise Unauthorized(f"send an API key as the X-API-Key header ({self.api_keys_env})")
        given = key.encode()
        if not any([hmac.compare_digest(given, k) for k in self.api_keys]):  # no early exit
            raise Forbidden("X-API-Key: not a valid API key")
