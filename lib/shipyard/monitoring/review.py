"""The review queue: uncertain live predictions sampled for a person to label, and the export
that appends the labelled ones to the next training run's data.

The queue is one CSV per model version (`<state_dir>/review/v<N>.csv`, the features that version
takes), so a person can label it in a spreadsheet: fill the `label` column, leave the rest. A
binary prediction is uncertain when its probability is within `band` of the 0.5 threshold; a
`sample_rate` share of those is queued, up to `max_rows` unlabelled rows. `export` moves the
labelled rows into a parquet file shaped like the training data (its columns and types, the
label under the target column, the prediction time under the time column) in the directory the
next run reads; the queue keeps only what is still unlabelled. Appends and the export hold a
file lock, so no row is lost between them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shipyard.config.serving import ReviewSection
from shipyard.errors import DataValidationError

META = ["review_id", "ts", "variant", "model_version", "score"]
LABEL = "label"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def queue_path(state_dir: str | os.PathLike[str], version: int) -> Path:
    return Path(state_dir) / "review" / f"v{int(version)}.csv"


def unlabelled_rows(path: Path) -> int:
    if not path.exists():
        return 0
    frame = pd.read_csv(path, usecols=[LABEL], dtype=str, keep_default_na=False)
    return int((frame[LABEL].str.strip() == "").sum())


class ReviewSampler:
    """Picks a binary model's near-threshold predictions and appends them to its queue."""

    def __init__(
        self, path: Path, settings: ReviewSection | None = None, seed: int | None = None
    ) -> None:
        """`settings`: the serving config's `review` section (its defaults when None)."""
        settings = settings or ReviewSection()
        self.path = path
        self.band, self.sample_rate = settings.band, settings.sample_rate
        self.max_rows = settings.max_rows
        self.rng = np.random.default_rng(seed)
        self.pending = unlabelled_rows(path)  # re-read when the cap is reached (export drains)
        self.queued = 0
        self._rows: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []  # not yet written
        self._buffered = 0

    def offer(
        self, feed: dict[str, np.ndarray], scores: np.ndarray, variant: str, version: int,
        write_every: int = 0,
    ) -> int:  # fmt: skip
        """Queue a sample of the batch's uncertain rows; returns how many were queued. They are
        written once `write_every` rows are waiting (0: now), or by `flush`."""
        scores = np.asarray(scores, dtype=np.float64)
        pick = np.abs(scores - 0.5) <= self.band
        pick &= self.rng.random(len(scores)) < self.sample_rate
        idx = np.flatnonzero(pick)
        if not len(idx):
            return 0
        if self.pending + len(idx) > self.max_rows:
            self.pending = unlabelled_rows(self.path) + self._buffered
            idx = idx[: max(0, self.max_rows - self.pending)]
            if not len(idx):
                return 0
        # Only numpy slices here (this runs for every batch the drift actor gets); the frame is
        # built when the rows are written. ONNX feeds are (rows, 1) columns.
        cols = {k: np.asarray(v).reshape(len(v), -1)[idx, 0] for k, v in feed.items()}
        meta = {"ts": time.time(), "variant": variant, "model_version": int(version),
                "score": scores[idx].round(6)}  # fmt: skip
        self._rows.append((meta, cols))
        self._buffered += len(idx)
        self.pending += len(idx)
        self.queued += len(idx)
        if self._buffered >= write_every:
            self.flush()
        return len(idx)

    def flush(self) -> None:
        """Append the sampled rows to the queue file (one write, under the queue's lock)."""
        if not self._rows:
            return
        parts, self._rows, self._buffered = self._rows, [], 0
        frames = []
        for meta, cols in parts:
            n = len(meta["score"])
            head = pd.DataFrame({
                "review_id": [uuid.uuid4().hex[:12] for _ in range(n)],
                "ts": pd.to_datetime(meta["ts"], unit="s", utc=True).isoformat(),
                "variant": meta["variant"],
                "model_version": meta["model_version"],
                "score": meta["score"],
            })  # fmt: skip
            frames.append(pd.concat([head, pd.DataFrame(cols)], axis=1))
        rows = pd.concat(frames, ignore_index=True)
        rows[LABEL] = ""
        with _locked(self.path):
            new = not self.path.exists()
            rows.to_csv(self.path, mode="a", header=new, index=False)


def export(
    queue: Path, into: Path, like: Path, target: str, time_column: str | None = None
) -> dict[str, Any]:
    """Labelled rows of `queue` -> `into/reviewed-<time>.parquet`, with the parquet schema of the
    training file `like`; the queue keeps its unlabelled rows. Bad labels are refused before
    anything moves."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(like).remove_metadata()
    if target not in schema.names:
        raise DataValidationError(
            f"target {target!r} is not a column of {like}; columns: {schema.names}"
        )
    with _locked(queue):
        if not queue.exists():
            raise DataValidationError(f"review queue {queue} does not exist (nothing sampled yet)")
        rows = pd.read_csv(queue, dtype=str, keep_default_na=False)
        done = rows[LABEL].str.strip() != ""
        labelled = rows[done].reset_index(drop=True)
        if labelled.empty:
            return {"exported": 0, "remaining": len(rows), "path": None}
        arrays = []
        for field in schema:
            if field.name == target:
                values = labelled[LABEL].str.strip()
            elif field.name == time_column:
                values = labelled["ts"]
            elif field.name in labelled.columns:
                values = labelled[field.name]
            else:  # not a model input (an id, a dropped column): unknown for reviewed rows
                arrays.append(pa.nulls(len(labelled), field.type))
                continue
            try:
                arrays.append(_to_arrow(values.replace("", None), field.type))
            except (ValueError, TypeError, pa.ArrowException) as err:
                which = "label" if field.name == target else field.name
                raise DataValidationError(
                    f"review queue {queue}: column {which!r} does not convert to the training "
                    f"data's {field.type} ({err}); fix those rows and export again"
                ) from None
        table = pa.Table.from_arrays(arrays, schema=schema)
        into.mkdir(parents=True, exist_ok=True)
        path = into / f"reviewed-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.parquet"
        pq.write_table(table, path)
        rest = rows[~done]
        tmp = queue.with_suffix(".tmp")
        rest.to_csv(tmp, index=False)
        os.replace(tmp, queue)
    return {"exported": len(labelled), "remaining": len(rest), "path": str(path)}


def _to_arrow(values: pd.Series, kind: Any) -> Any:
    """Strings from the CSV (None where empty) -> an arrow array of the training column's type."""
    import pyarrow as pa

    if pa.types.is_timestamp(kind):
        stamps = pd.to_datetime(values, utc=True)
        if kind.tz is None:
            stamps = stamps.dt.tz_convert(None)
        return pa.array(stamps.dt.floor("ms"), from_pandas=True).cast(kind, safe=False)
    if pa.types.is_boolean(kind):
        mapping = {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}
        low = values.str.lower()
        bad = sorted(set(low[low.notna() & ~low.isin(list(mapping))].tolist()))
        if bad:
            raise ValueError(f"{bad[:5]} are not booleans (accepted: 0, 1, true, false)")
        return pa.array(low.map(mapping), type=kind, from_pandas=True)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        numbers = pd.to_numeric(values, errors="raise")
        if pa.types.is_integer(kind):
            if not (numbers.dropna() % 1 == 0).all():
                raise ValueError(f"{numbers[numbers % 1 != 0].tolist()[:5]} are not integers")
            numbers = numbers.astype("Int64")
        return pa.array(numbers, type=kind, from_pandas=True)
    return pa.array(values, type=kind, from_pandas=True)
