"""The feedback join: which answered request an observed outcome belongs to.

Routers deliver request records at least once, and a client may send the outcome before its
request's record arrives. The index remembers, per request id, what was answered (variant,
version, prediction, key, whether it counts for the A/B) for the newest `max_index` joinable
requests; ids counted but not joinable (a failed request, a shadow answer, a request another
variant answered for the one it was routed to) are remembered apart, as many, so a record
delivered twice is counted once, and an outcome for one of them is kept as not counted (it
belongs to no variant's statistics) instead of waiting for a request that came already. An
outcome whose request has not arrived is
held for `ttl_s`, at most `max_pending` of them: the oldest gives way first and is counted as
dropped, an expired one as unmatched. What a joined outcome counts for is the experiment's.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

FEEDBACK_TTL_S = 600.0


class FeedbackJoin:
    """Request ids seen, their index entries, and the outcomes held for requests not yet seen."""

    def __init__(
        self,
        *,
        max_index: int,
        max_pending: int,
        clock: Callable[[], float],
        ttl_s: float = FEEDBACK_TTL_S,
    ) -> None:
        self.max_index = max_index
        self.max_pending = max_pending
        self.clock = clock
        self.ttl_s = ttl_s
        self.index: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # id -> its outcome (None: none yet), for ids counted but not joinable
        self.unindexed: collections.OrderedDict[str, float | None] = collections.OrderedDict()
        self.pending: dict[str, tuple[float, float]] = {}  # id -> (outcome, when it came)
        self.unmatched = 0  # held outcomes whose request never came within ttl_s
        self.dropped = 0  # held outcomes dropped over max_pending
        self.not_counted = 0  # outcomes of requests that count for no variant (not joinable)

    def seen(self, request_id: str) -> bool:
        return request_id in self.index or request_id in self.unindexed

    def has_outcome(self, request_id: str) -> bool:
        """An outcome is held for it or already joined to it."""
        entry = self.index.get(request_id)
        return (
            request_id in self.pending
            or self.unindexed.get(request_id) is not None
            or (entry is not None and "outcome" in entry)
        )

    def remember(self, request_id: str) -> None:
        """An id counted but not joinable (a failed request, a shadow answer); an outcome held
        for it is kept as not counted."""
        held = self.pending.pop(request_id, None)
        self.unindexed[request_id] = None
        if held is not None:
            self.settle(request_id, held[0])
        while len(self.unindexed) > self.max_index:
            self.unindexed.popitem(last=False)

    def settle(self, request_id: str, outcome: float) -> bool:
        """Keep the outcome of a request that is not joinable (counted as not counted); False
        if the id is not one of those."""
        if request_id not in self.unindexed:
            return False
        if self.unindexed[request_id] is None:
            self.not_counted += 1
        self.unindexed[request_id] = outcome
        return True

    def add(self, request_id: str, entry: dict[str, Any]) -> float | None:
        """Index an answered request; the outcome held for it, if one came first (no longer
        held: the caller joins it)."""
        self.index[request_id] = entry
        while len(self.index) > self.max_index:
            self.index.popitem(last=False)
        held = self.pending.pop(request_id, None)
        return None if held is None else held[0]

    def hold(self, request_id: str, outcome: float, ts: float) -> None:
        """Keep an outcome until its request arrives (expired and over-limit ones go first)."""
        cutoff = self.clock() - self.ttl_s
        stale = [k for k, (_, t) in self.pending.items() if t < cutoff]
        for k in stale:
            del self.pending[k]
        self.unmatched += len(stale)
        self.pending[request_id] = (outcome, ts)
        while len(self.pending) > self.max_pending:
            del self.pending[next(iter(self.pending))]  # the oldest
            self.dropped += 1

    def join(self, request_id: str, outcome: float) -> dict[str, Any] | None:
        """Write the outcome into its request's entry; the entry, or None if not indexed."""
        entry = self.index.get(request_id)
        if entry is not None:
            entry["outcome"] = outcome
        elif request_id in self.unindexed:
            self.unindexed[request_id] = outcome  # counted as not counted already
        return entry
