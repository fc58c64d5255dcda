"""The variants as the router calls them: one typed method per call, each with its deadline,
and which variants are out of routing because their bundle did not load.

A variant's timeout is an UpstreamTimeout (504); a failure the variant caused is Unavailable
(503); the variant's own typed errors (a record it refused) pass through. A treatment that
control could stand in for is given up on sooner (limits.fallback_after_s: Unresponsive) and
leaves routing; a call nothing can stand in for is sent once more after that long (a replica on
a lost node hangs until Ray declares the node dead), and the first answer wins. The health check
asks every variant whether it has loaded: one that says no, or that was given up on, is out of
routing (with its reason) until it answers that it has; one that does not answer the probe in
time keeps its state (Serve restarts dead replicas, and a busy one is not a broken one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from serving.calls import awaited, within
from shipyard.config.serving import Limits
from shipyard.errors import ShipyardError, Unavailable, Unresponsive, UpstreamTimeout

logger = logging.getLogger(__name__)


class VariantPool:
    def __init__(self, handles: dict[str, Any], limits: Limits) -> None:
        self.handles = handles  # variant name -> its deployment handle
        self.limits = limits
        self.down: dict[str, str] = {}  # variant -> why it cannot serve (its bundle did not load)

    def __contains__(self, name: object) -> bool:
        return name in self.handles

    async def predict(
        self, variant: str, instances: list[Any], fallback: bool = False
    ) -> dict[str, Any]:
        """`fallback`: another variant (control) can answer instead, so give up after
        limits.fallback_after_s (Unresponsive) and take this one out of routing until it
        answers the health probe: a variant on a lost node stops costing requests at once."""
        call = lambda: self.handles[variant].predict.remote(instances)  # noqa: E731
        if not fallback:
            out: dict[str, Any] = await self._hedged(variant, call)
            return out
        try:
            out = await self._call(variant, call, self.limits.fallback_after_s, Unresponsive)
        except Unresponsive as err:
            if variant not in self.down:
                self.down[variant] = f"{err.message}: out of routing until it answers"
                logger.warning("variant %s: %s", variant, self.down[variant])
            raise
        return out

    async def explain(self, variant: str, record: Any) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(
            variant, lambda: self.handles[variant].explain.remote(record)
        )
        return out

    async def infos(self, names: list[str]) -> list[Any]:
        """Each variant's own account of itself (loaded, error, features), or the exception
        raised in its place when it did not answer within limits.probe_timeout_s."""
        probe = self.limits.probe_timeout_s
        return await asyncio.gather(
            *[within(self.handles[n].info.remote(), probe, "variant") for n in names],
            return_exceptions=True,
        )

    async def check_health(
        self, names: list[str], on_info: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """Take out of routing the variants that say they have not loaded; put back those that
        now have. `on_info` sees every answer (the router hands capture the features)."""
        for name, info in zip(names, await self.infos(names), strict=True):
            if isinstance(info, BaseException):
                continue
            if on_info is not None:
                on_info(info)
            if info.get("loaded", True):
                if self.down.pop(name, None) is not None:
                    logger.warning("variant %s loaded: back in routing", name)
            elif name not in self.down:
                self.down[name] = f"variant {name!r} has not loaded: {info.get('error')}"
                logger.warning("%s: out of routing", self.down[name])

    async def _hedged(self, variant: str, call: Callable[[], Any]) -> Any:
        """A call no other variant can stand in for (control's): sent once more if it has not
        answered within limits.fallback_after_s, since its replica may be on a lost node, which
        Ray takes 10-15 s to declare dead (Serve sends the second to a replica that answers its
        queue probes); the first answer wins, both within limits.timeout_s."""
        timeout = self.limits.timeout_s
        hedge_after = min(self.limits.fallback_after_s, timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls: dict[asyncio.Future[Any], Any] = {}
        try:
            response = call()
            calls[asyncio.ensure_future(awaited(response))] = response
            done, _ = await asyncio.wait(set(calls), timeout=hedge_after)
            if not done and hedge_after < timeout:
                logger.info("variant %s: no answer in %g s, asking again", variant, hedge_after)
                response = call()
                calls[asyncio.ensure_future(awaited(response))] = response
                done, _ = await asyncio.wait(
                    set(calls), timeout=timeout - (loop.time() - started),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            if not done:
                raise UpstreamTimeout(
                    f"the model of variant {variant!r} did not answer within {timeout:g} s"
                )
            return next(iter(done)).result()
        except Exception as err:
            raise _failure(variant, err) from None
        finally:
            for future, pending in calls.items():
                if not future.done():
                    future.cancel()
                    pending.cancel()

    async def _call(
        self,
        variant: str,
        call: Callable[[], Any],
        deadline_s: float | None = None,
        late: type[ShipyardError] = UpstreamTimeout,
    ) -> Any:
        timeout = min(deadline_s or self.limits.timeout_s, self.limits.timeout_s)
        try:
            return await within(call(), timeout, f"model of variant {variant!r}", late)
        except Exception as err:
            raise _failure(variant, err) from None


def _failure(variant: str, err: Exception) -> ShipyardError:
    """What a failed call raises: the variant's own typed error as it is, anything else 503."""
    if isinstance(err, ShipyardError):
        return err
    logger.warning("variant %s failed: %s", variant, err)
    return Unavailable(f"variant {variant!r}: model failed")
