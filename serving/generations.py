"""How far a piece of serving state has been written, kept cluster-wide in Ray's GCS: the
experiment store records its journal position, a drift actor its save number. A replica that
finds older state on `state_uri` than this says was written refuses to start (a node-local path
read on another node); one that finds a newer write than its own stops writing."""

from __future__ import annotations

KV_NAMESPACE = "shipyard"


class Generations:
    """The newest write position of one piece of state (`key`: its URI), outliving any one
    replica; without Ray (a plain object in unit tests) nothing is known or recorded."""

    def __init__(self, key: str) -> None:
        from ray.experimental import internal_kv

        self.kv, self.key = internal_kv, key

    def known(self) -> int:
        if not self.kv._internal_kv_initialized():
            return 0
        raw = self.kv._internal_kv_get(self.key, namespace=KV_NAMESPACE)
        return int(raw) if raw else 0

    def record(self, seq: int) -> None:
        if self.kv._internal_kv_initialized():
            self.kv._internal_kv_put(self.key, str(seq), overwrite=True, namespace=KV_NAMESPACE)
