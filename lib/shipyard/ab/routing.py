"""Sticky, monotone traffic assignment over a fixed table of hash buckets.

A key hashes to one of `BUCKETS` buckets; a table says which variant owns each bucket. When
weights change, the table is rebalanced through the control variant only: a variant that shrinks
hands buckets to control, a variant that grows takes them from control's original buckets. So a
key keeps its variant while weights are unchanged, and raising a treatment's weight moves keys
from control to that treatment and never between other variants. The table is state (it depends
on the history of weights); the experiment store persists it as ranges.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np

BUCKETS = 10_000


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def bucket_of(key: str, salt: str = "") -> int:
    return _hash(f"{salt}\x1f{key}") % BUCKETS


def shadow_hit(key: str | None, variant: str, percent: float, salt: str = "") -> bool:
    """Is this request mirrored to `variant`? Sticky per key, independent of the live split."""
    if percent <= 0:
        return False
    if key is None:
        return random.random() * 100 < percent
    return _hash(f"{salt}\x1fshadow\x1f{variant}\x1f{key}") % BUCKETS < percent * BUCKETS / 100


def targets(weights: dict[str, float], control: str) -> dict[str, int]:
    """Bucket counts per variant by largest remainder; control absorbs rounding."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("at least one weight must be > 0")
    exact = {n: BUCKETS * w / total for n, w in weights.items() if w > 0}
    counts = {n: int(x) for n, x in exact.items()}
    short = BUCKETS - sum(counts.values())
    for n in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[:short]:
        counts[n] += 1
    counts.setdefault(control, 0)
    return counts


class Allocation:
    """Which variant owns each bucket."""

    def __init__(self, names: list[str], table: np.ndarray) -> None:
        self.names = list(names)
        self.table = table.astype(np.int16)

    @classmethod
    def initial(cls, weights: dict[str, float], control: str) -> Allocation:
        empty = cls(list(weights), np.full(BUCKETS, -1, dtype=np.int16))
        return empty.rebalance(weights, control)

    def counts(self) -> dict[str, int]:
        idx, n = np.unique(self.table[self.table >= 0], return_counts=True)
        out = {name: 0 for name in self.names}
        out.update({self.names[i]: int(c) for i, c in zip(idx, n, strict=True)})
        return out

    def shares(self) -> dict[str, float]:
        return {n: c / BUCKETS for n, c in self.counts().items()}

    def variant_of(self, bucket: int) -> str:
        return self.names[int(self.table[bucket])]

    def assign(self, key: str | None, salt: str = "") -> str:
        bucket = random.randrange(BUCKETS) if key is None else bucket_of(key, salt)
        return self.variant_of(bucket)

    def rebalance(self, weights: dict[str, float], control: str) -> Allocation:
        """A new table for `weights`; buckets move only to or from `control`."""
        if control not in weights or weights[control] < 0:
            raise ValueError(f"control {control!r} must be one of the variants {list(weights)}")
        names = self.names + [n for n in weights if n not in self.names]
        table = self.table.copy()
        c = names.index(control)
        want = targets(weights, control)
        # Unowned buckets (first allocation) and buckets of variants that are gone go to control.
        known = {names.index(n) for n in weights}
        orphan = (table < 0) | ~np.isin(table, list(known))
        original_control = (table == c) & ~orphan
        table[orphan] = c
        # Shrinking variants hand back their highest buckets.
        for name in weights:
            i = names.index(name)
            if i == c:
                continue
            owned = np.flatnonzero(table == i)
            extra = len(owned) - want.get(name, 0)
            if extra > 0:
                table[owned[-extra:]] = c
        # Growing variants take control's buckets, those control held before this change first.
        for name in weights:
            i = names.index(name)
            if i == c:
                continue
            deficit = want.get(name, 0) - int(np.count_nonzero(table == i))
            if deficit <= 0:
                continue
            pool = np.concatenate(
                [
                    np.flatnonzero(original_control & (table == c)),
                    np.flatnonzero(~original_control & (table == c)),
                ]
            )
            table[pool[:deficit]] = i
        return Allocation(names, table)

    def to_json(self) -> dict[str, Any]:
        """Run-length ranges per variant: [[start, end), ...]."""
        ranges: dict[str, list[list[int]]] = {n: [] for n in self.names}
        change = np.flatnonzero(np.diff(self.table)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [BUCKETS]])
        for s, e in zip(starts, ends, strict=True):
            owner = int(self.table[s])
            if owner >= 0:
                ranges[self.names[owner]].append([int(s), int(e)])
        return {"buckets": BUCKETS, "ranges": ranges}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Allocation:
        if data.get("buckets") != BUCKETS:
            raise ValueError(f"allocation has {data.get('buckets')} buckets, expected {BUCKETS}")
        names = list(data["ranges"])
        table = np.full(BUCKETS, -1, dtype=np.int16)
        for i, name in enumerate(names):
            for s, e in data["ranges"][name]:
                table[s:e] = i
        return cls(names, table)
