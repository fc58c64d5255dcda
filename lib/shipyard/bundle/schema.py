"""The model's input schema: which raw columns it takes, their kinds and the categories it knows.

One schema drives the native encoding (training, parity checks) and the ONNX graph's inputs, so
both sides see a raw record the same way: numbers as float32 with NaN for missing, categories
as strings with unseen or missing ones mapped to NaN (XGBoost's missing value).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import numpy as np
import pandas as pd

from shipyard.errors import InvalidRecord

FORMAT_VERSION = 1
Kind = Literal["numeric", "categorical"]
# The graph reads numbers as float32: a larger magnitude would become inf, which XGBoost refuses.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            d["categories"] = list(self.categories)
        return d


def category_strings(values: pd.Series) -> np.ndarray:
    """Raw category values as strings; missing ones (None, NaN, '') become ''."""
    s = values.astype("string").fillna("")
    return s.to_numpy(dtype=object)


@dataclasses.dataclass(frozen=True)
class InputSchema:
    task: str
    target: str
    features: tuple[Feature, ...]
    classes: tuple[Any, ...] = ()  # classification: label values; index = encoded class
    time_column: str | None = None
    dropped: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def check_columns(self, df: pd.DataFrame) -> None:
        missing = [n for n in self.names if n not in df.columns]
        if missing:
            raise InvalidRecord(
                f"missing feature column(s) {missing}; the model takes {self.names}"
            )

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Raw frame -> float32 matrix in feature order (the booster's input)."""
        return self.encode_feed(self.onnx_feed(df))

    def onnx_feed(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw frame -> the ONNX graph's inputs: one [N, 1] tensor per feature."""
        self.check_columns(df)
        feed: dict[str, np.ndarray] = {}
        for f in self.features:
            col = df[f.name]
            if f.kind == "numeric":
                feed[f.name] = (
                    pd.to_numeric(col, errors="coerce")
                    .to_numpy(dtype=np.float32, na_value=np.nan)
                    .reshape(-1, 1)
                )
            else:
                feed[f.name] = category_strings(col).reshape(-1, 1)
        return feed

    def accepted_extra(self) -> set[str]:
        """Raw columns a record may carry that are not features: target, time, dropped columns."""
        extra = {self.target, *self.dropped}
        if self.time_column:
            extra.add(self.time_column)
        return extra

    def validate_records(self, records: list[Any]) -> dict[str, np.ndarray]:
        """JSON records -> the ONNX feed, or InvalidRecord naming the record and field.

        Every feature must be present (null = missing value); numbers must be JSON numbers,
        categories strings (integers are read as their decimal string); unknown fields are
        refused unless they are the target, time or dropped columns of the training data.
        """
        n = len(records)
        cols: dict[str, list[Any]] = {f.name: [None] * n for f in self.features}
        kinds = {f.name: f.kind for f in self.features}
        extra = self.accepted_extra()
        for i, rec in enumerate(records):
            where = f"instances[{i}]" if n > 1 else "instance"
            if not isinstance(rec, dict):
                raise InvalidRecord(
                    f"{where} must be an object of feature -> value, got {type(rec).__name__}"
                )
            for name, value in rec.items():
                kind = kinds.get(name)
                if kind is None:
                    if name in extra:
                        continue
                    raise InvalidRecord(
                        f"{where}: unknown field {name!r}; the model takes {self.names}"
                    )
                if value is None:
                    continue
                if kind == "numeric":
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise InvalidRecord(
                            f"{where}.{name} must be a number or null, got "
                            f"{type(value).__name__} {value!r}"[:200],
                            field=name,
                        )
                    if value != value or abs(value) > FLOAT32_MAX:  # NaN, inf, beyond float32
                        shown = f"{value:.4g}" if isinstance(value, float) else (
                            f"an integer of {len(str(abs(value)))} digits"
                        )  # fmt: skip
                        raise InvalidRecord(
                            f"{where}.{name} = {shown} is not a number the model reads: numbers "
                            f"must be finite and within float32 (|x| <= {FLOAT32_MAX:.4g}); "
                            "send null for a missing value",
                            field=name,
                        )
                elif isinstance(value, int) and not isinstance(value, bool):
                    value = str(value)
                elif not isinstance(value, str):
                    raise InvalidRecord(
                        f"{where}.{name} must be a string (category) or null, got "
                        f"{type(value).__name__} {value!r}"[:200],
                        field=name,
                    )
                cols[name][i] = value
            missing = [f for f in kinds if f not in rec]
            if missing:
                raise InvalidRecord(
                    f"{where}: missing field(s) {missing}; send null for a missing value"
                )
        feed: dict[str, np.ndarray] = {}
        for f in self.features:
            vals = cols[f.name]
            if f.kind == "numeric":
                feed[f.name] = np.array(
                    [np.nan if v is None else v for v in vals], dtype=np.float32
                ).reshape(-1, 1)
            else:
                feed[f.name] = np.array(
                    ["" if v is None else v for v in vals], dtype=object
                ).reshape(-1, 1)
        return feed

    def encode_feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """An ONNX feed (raw values per feature) -> the booster's float32 matrix."""
        n = len(next(iter(feed.values()))) if feed else 0
        out = np.empty((n, len(self.features)), dtype=np.float32)
        for j, f in enumerate(self.features):
            col = feed[f.name].reshape(-1)
            if f.kind == "numeric":
                out[:, j] = col
            else:
                codes = {c: i for i, c in enumerate(f.categories)}
                out[:, j] = np.fromiter((codes.get(v, np.nan) for v in col), np.float32, len(col))
        return out

    def encode_target(self, y: pd.Series) -> np.ndarray:
        """Target column -> class index (classification) or float (regression)."""
        if self.task == "regression":
            return pd.to_numeric(y, errors="raise").to_numpy(dtype=np.float64)
        index = {c: i for i, c in enumerate(self.classes)}
        codes = y.map(index)
        if codes.isna().any():
            unknown = sorted({str(v) for v in y[codes.isna()].unique()})[:5]
            raise InvalidRecord(
                f"target {self.target!r} has values {unknown} that the model was not trained "
                f"on; known classes: {list(self.classes)}"
            )
        return codes.to_numpy(dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "target": self.target,
            "classes": [_jsonable(c) for c in self.classes],
            "time_column": self.time_column,
            "dropped": list(self.dropped),
            "features": [f.to_dict() for f in self.features],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSchema:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"input schema format_version {d.get('format_version')!r} is not supported "
                f"(this Shipyard reads {FORMAT_VERSION})"
            )
        return cls(
            task=d["task"],
            target=d["target"],
            classes=tuple(d.get("classes", [])),
            time_column=d.get("time_column"),
            dropped=tuple(d.get("dropped", [])),
            features=tuple(
                Feature(f["name"], f["kind"], tuple(f.get("categories", ()))) for f in d["features"]
            ),
        )


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
