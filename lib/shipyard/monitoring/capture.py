"""Request capture: what was served, as Parquet under the app's `state_uri`, for training on it.

Every answered request (any status) becomes one row per record: the raw input features as
received (typed by the model's input schema: numbers float64, categories strings; a value that
fits neither is null, and such a request was refused, which its status says), every other field
the client sent (an id such as `customer_id`, the target, a timestamp: as text, JSON text for
what is not a string, so captured rows join to a team's own tables), the prediction, score and
probabilities, the variant, version, key hash, latency, status, and whether it was a shadow
answer. Every acknowledged feedback becomes one row with its request id. Everything Shipyard adds
is named `served_*`, so a field can never collide with it (a client's own `served_*` field is
left out). A field a file's records do not carry is absent from that file: Ray Data unifies the
files' columns (null where absent); a reader that takes one file's schema for all sees that
file's.

Layout (Hive partitions, readable by Ray Data, pandas and pyarrow with no Shipyard code):

    capture/requests/served_model=M/served_date=YYYY-MM-DD/served_hour=HH/served_variant=V/part-*.parquet
    capture/feedback/served_model=M/served_date=YYYY-MM-DD/served_hour=HH/part-*.parquet

Off the request path and bounded: `add_*` is a dict build and a locked deque append; a writer
thread writes a file every `file_s` or `file_rows`. Beyond `max_buffered_rows` rows are dropped
and counted, so a slow store never delays or fails a prediction. Sampling is by request id, so a
request and its feedback are kept or left out together.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from shipyard.config.serving import CaptureSection
from shipyard.errors import StorageError
from shipyard.storage import StateDir

logger = logging.getLogger(__name__)

REQUEST_COLUMNS = {
    "served_request_id": pa.string(),
    "served_record": pa.int32(),  # the record's place in its request
    "served_time": pa.timestamp("us", tz="UTC"),
    "served_version": pa.int64(),
    "served_routed_to": pa.string(),  # the variant the key was routed to, when another answered
    "served_key_hash": pa.string(),
    "served_status": pa.int32(),
    "served_latency_ms": pa.float64(),
    "served_shadow": pa.bool_(),
    "served_prediction": pa.string(),
    "served_score": pa.float64(),
    "served_probabilities": pa.list_(pa.float64()),  # one per class, in class order
}
FEEDBACK_COLUMNS = {
    "served_request_id": pa.string(),
    "served_time": pa.timestamp("us", tz="UTC"),
    "served_outcome": pa.float64(),
    "served_joined": pa.bool_(),
    "served_variant": pa.string(),
}


def sampled(request_id: str, rate: float) -> bool:
    """The same answer for the same id (a request and its feedback), in proportion `rate`."""
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=4).digest(), "big")
    return h / 2**32 < rate


def _number(v: Any) -> float | None:
    """A number as float64; anything else, or an integer beyond float64, is null."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def _per_class(p: Any) -> list[float] | None:
    """One probability per class, in class order (binary answers carry P(positive) alone)."""
    if isinstance(p, list):
        return [float(x) for x in p]
    q = _number(p)
    return None if q is None else [1.0 - q, q]


def _text(v: Any) -> str | None:
    return None if v is None or isinstance(v, dict | list) else str(v)


def _raw(v: Any) -> str | None:
    """A field beyond the model's features, as text: a string as it is, anything else as JSON."""
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, default=str)


class Capture:
    def __init__(
        self,
        state: StateDir,
        model: str,
        settings: CaptureSection,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`state`: the app's `capture/` folder."""
        self.state, self.model, self.settings, self.clock = state, model, settings, clock
        self.kinds: dict[str, str] = {}  # feature -> numeric | categorical (from the variants)
        self._rows: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._stop = False
        self._name = uuid.uuid4().hex[:12]  # this writer's files never collide with another's
        self._seq = 0
        self.rows_written = 0
        self.files = 0
        self.dropped = 0
        self.failed_writes = 0

    # --- the request path -------------------------------------------------------------------
    def set_features(self, kinds: dict[str, str]) -> None:
        """The variants' input features (the union; a feature two versions type differently
        is kept as text)."""
        merged = dict(self.kinds)
        for name, kind in kinds.items():
            merged[name] = kind if merged.get(name, kind) == kind else "categorical"
        self.kinds = merged

    def add_request(
        self,
        request_id: str,
        variant: str,
        version: int,
        instances: list[Any],
        status: int,
        latency_ms: float,
        *,
        key_hash: str | None = None,
        routed_to: str | None = None,
        shadow: bool = False,
        out: dict[str, Any] | None = None,
    ) -> None:
        if not sampled(request_id, self.settings.sample_rate):
            return
        now = self.clock()
        preds = (out or {}).get("predictions") or [None] * len(instances)
        probs = (out or {}).get("probabilities") or [None] * len(instances)
        scores = (out or {}).get("score") or [None] * len(instances)
        base = {"served_request_id": request_id, "served_time": now, "served_version": version,
                "served_routed_to": routed_to, "served_key_hash": key_hash,
                "served_status": status, "served_latency_ms": latency_ms, "served_shadow": shadow,
                "served_variant": variant}  # fmt: skip
        rows = [
            {**base, "served_record": i, "served_prediction": _text(preds[i]),
             "served_score": _number(scores[i]),
             "served_probabilities": _per_class(probs[i]),
             "features": rec if isinstance(rec, dict) else {}}
            for i, rec in enumerate(instances)
        ]  # fmt: skip
        self._put("requests", rows)

    def add_feedback(
        self, request_id: str, outcome: float, joined: bool, variant: str | None
    ) -> None:
        if not sampled(request_id, self.settings.sample_rate):
            return
        self._put("feedback", [{"served_request_id": request_id, "served_time": self.clock(),
                                "served_outcome": outcome, "served_joined": joined,
                                "served_variant": variant}])  # fmt: skip

    def _put(self, kind: str, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            room = self.settings.max_buffered_rows - len(self._rows)
            if room < len(rows):
                self.dropped += len(rows) - max(room, 0)
                rows = rows[: max(room, 0)]
            self._rows.extend((kind, r) for r in rows)
            full = len(self._rows) >= self.settings.file_rows
        if full:
            self._wake.set()

    # --- the writer -------------------------------------------------------------------------
    def start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._loop, name="capture", daemon=True)
            self._writer.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is buffered and stop the writer."""
        self._stop = True
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout_s)
        self.flush()

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(self.settings.file_s)
            self._wake.clear()
            if not self._stop:
                self.flush()

    def flush(self) -> int:
        """Write everything buffered now, one file per partition; returns the rows written. A
        file storage refused goes back in front of the buffer (within its bound)."""
        if not self.kinds:
            return 0  # no variant has said its features yet: the columns' types are unknown
        with self._lock:
            taken = list(self._rows)
            self._rows.clear()
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = collections.defaultdict(list)
        for kind, row in taken:
            t = dt.datetime.fromtimestamp(row["served_time"], dt.timezone.utc)
            part = [kind, f"served_model={self.model}", f"served_date={t:%Y-%m-%d}",
                    f"served_hour={t:%H}"]  # fmt: skip
            if kind == "requests":
                part.append(f"served_variant={row['served_variant']}")
            groups[tuple(part)].append(row)
        written = 0
        for key, rows in groups.items():
            self._seq += 1
            rel = "/".join(key) + f"/part-{self._name}-{self._seq:06d}.parquet"
            try:
                table = self._table(key[0], rows)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                self.dropped += len(rows)  # cannot become a table: retrying would not help
                logger.error("capture: %d rows dropped, not tabular: %s", len(rows), err)
                continue
            try:
                self.state.write_table(rel, table)
            except StorageError as err:
                self.failed_writes += 1
                logger.warning("capture: %s (rows kept for the next write)", err)
                with self._lock:
                    room = self.settings.max_buffered_rows - len(self._rows)
                    keep = rows[: max(room, 0)]
                    self.dropped += len(rows) - len(keep)
                    self._rows.extendleft((key[0], r) for r in reversed(keep))
                continue
            written += len(rows)
            self.files += 1
        self.rows_written += written
        return written

    def _table(self, kind: str, rows: list[dict[str, Any]]) -> pa.Table:
        columns = REQUEST_COLUMNS if kind == "requests" else FEEDBACK_COLUMNS
        data: dict[str, pa.Array] = {}
        for name, typ in columns.items():
            if name == "served_time":
                data[name] = pa.array([int(r[name] * 1e6) for r in rows], type=typ)
            else:
                data[name] = pa.array([r.get(name) for r in rows], type=typ)
        if kind == "requests":
            for feature, fkind in self.kinds.items():
                raw = [r["features"].get(feature) for r in rows]
                if fkind == "numeric":
                    data[feature] = pa.array([_number(v) for v in raw], type=pa.float64())
                else:
                    data[feature] = pa.array([_text(v) for v in raw], type=pa.string())
            others = {k for r in rows for k in r["features"]} - set(self.kinds)
            for field in sorted(k for k in others if not k.startswith("served_")):
                data[field] = pa.array([_raw(r["features"].get(field)) for r in rows], pa.string())
        return pa.table(data)

    def stats(self) -> dict[str, Any]:
        return {"enabled": True, "sample_rate": self.settings.sample_rate,
                "buffered": len(self._rows), "rows_written": self.rows_written,
                "files": self.files, "dropped": self.dropped,
                "failed_writes": self.failed_writes}  # fmt: skip
