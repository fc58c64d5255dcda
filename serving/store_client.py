"""The experiment store as the router calls it: one typed method per call, each with its
deadline, and the probe that marks the store away.

Reads (the report, the config version) get `limits.probe_timeout_s`; writes (the journal,
registry aliases: tens of ms a put on an object store, more under load) get `limits.timeout_s`.
Away or unreachable is a 503 for the request that needed it, never a 500 and never a long wait:
once the probe (or a failed call) finds the store away, every call answers 503 at once until the
probe hears from it again, and a write already waiting for it is answered 503 too. Routing never
needs the store (the router routes from its own table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from serving.calls import within
from shipyard.config.serving import Limits
from shipyard.errors import ShipyardError, StorageError, Unavailable

logger = logging.getLogger(__name__)


class StoreClient:
    def __init__(self, handle: Any, limits: Limits) -> None:
        self.handle = handle  # the experiment store's deployment handle
        self.limits = limits
        self.away: str | None = None  # why the store cannot answer now

    # --- calls made at deploy time and by the refresh (no deadline: they wait for the store) -
    async def snapshot(self) -> dict[str, Any]:
        """The traffic table and its config version."""
        snapshot: dict[str, Any] = await self.handle.snapshot.remote()
        return snapshot

    async def apply_deploy(self, traffic: dict[str, Any]) -> None:
        """`serve deploy`'s user_config, applied by the store only if it changed since."""
        await self.handle.apply_deploy.remote(traffic)

    # --- reads ---------------------------------------------------------------------------------
    async def report(self) -> dict[str, Any]:
        report: dict[str, Any] = await self._read(lambda: self.handle.report.remote())
        return report

    # --- writes --------------------------------------------------------------------------------
    async def ingest(self, rows: list[dict[str, Any]]) -> Any:
        return await self._write(lambda: self.handle.ingest.remote(rows))

    async def collect(self, grace_s: float) -> dict[str, int]:
        """Have the store take the segments routers left (`shipyard.ab.segments.collect`)."""
        found: dict[str, int] = await self._write(lambda: self.handle.collect.remote(grace_s))
        return found

    async def feedback(self, request_id: str, outcome: float) -> dict[str, Any]:
        answer: dict[str, Any] = await self._write(
            lambda: self.handle.feedback.remote(request_id, outcome)
        )
        return answer

    async def set_traffic(self, update: dict[str, Any], who: str) -> dict[str, Any]:
        snapshot: dict[str, Any] = await self._write(
            lambda: self.handle.set_traffic.remote(update, who)
        )
        return snapshot

    async def promote(self, name: str, who: str) -> dict[str, Any]:
        snapshot: dict[str, Any] = await self._write(lambda: self.handle.promote.remote(name, who))
        return snapshot

    async def rollback(self, name: str, reason: str, who: str) -> dict[str, Any]:
        snapshot: dict[str, Any] = await self._write(
            lambda: self.handle.rollback.remote(name, reason, who)
        )
        return snapshot

    # --- the probe -----------------------------------------------------------------------------
    async def check(self, known_version: Any) -> dict[str, Any] | None:
        """Ask the store for its config version and, if it is not `known_version`, its table
        (returned; None when nothing changed or the store is away). One that does not answer
        within limits.probe_timeout_s is marked away; one that answers is back."""
        try:
            response = self.handle.config_version.remote()
            version = await within(response, self.limits.probe_timeout_s, "store")
            changed = await self.snapshot() if version != known_version else None
        except Exception as err:  # the store restarts by itself; routing goes on meanwhile
            if self.away is None:
                logger.warning("experiment store unreachable: %s", err)
            self.away = "not answering (restarting?)"
            return None
        if self.away is not None:
            logger.warning("experiment store is back")
        self.away = None
        return changed

    # --- how a call is made --------------------------------------------------------------------
    def _refuse_if_away(self) -> None:
        if self.away is not None:
            raise Unavailable(f"experiment store unavailable ({self.away}); retry shortly")

    async def _read(self, call: Callable[[], Any]) -> Any:
        self._refuse_if_away()
        try:
            return await within(call(), self.limits.probe_timeout_s, "experiment store")
        except Exception as err:
            raise self._failed(err) from None

    async def _write(self, call: Callable[[], Any]) -> Any:
        """A write may take a while; but once the probe finds the store away (its replica died
        with this call queued for it), the caller is answered 503 at once."""
        self._refuse_if_away()
        try:
            response = call()
            waiting = asyncio.ensure_future(
                within(response, self.limits.timeout_s, "experiment store")
            )
            watch = asyncio.ensure_future(self._until_away())
            done, _ = await asyncio.wait({waiting, watch}, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            if waiting not in done:
                waiting.cancel()
                response.cancel()
                raise Unavailable(f"experiment store unavailable ({self.away}); retry shortly")
            return waiting.result()
        except Exception as err:
            raise self._failed(err) from None

    def _failed(self, err: Exception) -> Exception:
        """What a failed call raises: storage refusing a write (the store is up, nothing was
        changed) and the store's own typed errors pass through; anything else marks it away."""
        if isinstance(err, StorageError):
            return err
        if isinstance(err, Unavailable):
            self.away = "not answering (restarting?)"
            return Unavailable("experiment store unavailable; retry shortly")
        if isinstance(err, ShipyardError):
            return err
        logger.warning("experiment store call failed: %s", err)
        self.away = "call failed (restarting?)"
        return Unavailable("experiment store unavailable; retry shortly")

    async def _until_away(self) -> None:
        while self.away is None:
            await asyncio.sleep(0.1)
