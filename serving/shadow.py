"""Shadow mirroring: a copy of a live request goes to a shadow variant in the background.

The live request never waits for its shadow: `mirror` schedules a task and returns. At most
`max_in_flight` copies per shadow variant run at once; beyond that the copy is dropped and
counted. What the shadow answered is compared with the live answer (agreement of predictions,
mean absolute difference of probabilities or values) and recorded for the A/B report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)


def compare(live: dict[str, Any], shadow: dict[str, Any]) -> dict[str, float]:
    """Agreement of predictions and, where they are numbers, their mean absolute difference."""
    live_p, shadow_p = live["predictions"], shadow["predictions"]
    out = {"agree": sum(a == b for a, b in zip(live_p, shadow_p, strict=True)) / len(live_p)}
    if "probabilities" in live and isinstance(live["probabilities"][0], float):
        a, b = live["probabilities"], shadow["probabilities"]
    elif isinstance(live_p[0], int | float) and not isinstance(live_p[0], bool):
        a, b = live_p, shadow_p
    else:
        return out
    out["abs_diff"] = sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
    return out


class ShadowMirror:
    def __init__(
        self,
        call: Callable[[str, list[Any]], Awaitable[dict[str, Any]]],
        record: Callable[..., None],
        count: Callable[[str, str], None],
        names: list[str],
        max_in_flight: int = 32,
        on_answer: Callable[[str, list[Any], dict[str, Any] | None, float, str], None]
        | None = None,
    ) -> None:
        """`on_answer(variant, instances, answer or None, ms, request id)`: request capture."""
        self.call = call  # (variant, instances) -> the variant's answer
        self.record = record  # a row for the A/B statistics
        self.count = count  # (variant, outcome) -> a metric
        self.max_in_flight = max_in_flight
        self.on_answer = on_answer
        self.in_flight = {name: 0 for name in names}
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(
        self, name: str, instances: list[Any], live: dict[str, Any], request_id: str = ""
    ) -> None:
        if self.in_flight[name] >= self.max_in_flight:
            self.record("shadow", variant=name, dropped=True)
            self.count(name, "dropped")
            return
        self.in_flight[name] += 1
        task = asyncio.get_running_loop().create_task(self._run(name, instances, live, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, name: str, instances: list[Any], live: dict[str, Any], request_id: str
    ) -> None:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"variant": name, "ok": False}
        out: dict[str, Any] | None = None
        try:
            out = await self.call(name, instances)
            row.update(ok=True, latency_ms=(time.perf_counter() - t0) * 1e3, **compare(live, out))
        except Exception as err:  # a failing shadow is recorded, never raised
            logger.info("shadow %s failed: %s", name, err)
        finally:
            self.in_flight[name] -= 1
        if self.on_answer is not None:
            self.on_answer(name, instances, out, (time.perf_counter() - t0) * 1e3, request_id)
        self.record("shadow", **row)
        self.count(name, "ok" if row["ok"] else "error")
