"""Calls through a Serve deployment handle with a deadline: what the router's store client and
variant pool share."""

from __future__ import annotations

import asyncio
from typing import Any

from shipyard.errors import ShipyardError, Unavailable


async def awaited(response: Any) -> Any:
    """A handle's response as a coroutine (what `asyncio.wait_for` and `ensure_future` take)."""
    return await response


async def within(
    response: Any, timeout_s: float, what: str, late: type[ShipyardError] = Unavailable
) -> Any:
    """Await a handle's response for at most `timeout_s`; past it the call is cancelled (a call
    still queued for a replica that is being replaced never runs) and `late` raised."""
    try:
        return await asyncio.wait_for(awaited(response), timeout_s)
    except asyncio.TimeoutError:
        response.cancel()
        raise late(f"the {what} did not answer within {timeout_s:g} s") from None
