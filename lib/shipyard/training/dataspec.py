"""Pure dataset logic: which columns are features, target checks, and the deterministic split."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from shipyard.errors import DataValidationError

TRAIN, VALID, HOLDOUT = 0, 1, 2
SPLIT_COLUMN = "__split"
LABEL_COLUMN = "__label"
VALID_FRACTION = 0.1  # of the non-holdout rows, for early stopping


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    dropped: tuple[str, ...]  # asked for by config, or unusable types (logged)
    notes: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def _is_categorical_type(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_boolean(t)
        or pa.types.is_dictionary(t)
    )


def _is_numeric_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def plan_columns(schema: pa.Schema, data: Any) -> ColumnPlan:
    """Decide feature columns from the file schema and the `data:` config section."""
    cols = list(schema.names)
    types = {n: schema.field(n).type for n in cols}
    if data.target not in types:
        raise DataValidationError(
            f"data.target: column {data.target!r} is not in the data; columns are {cols}"
        )
    for key, listed in (("data.categorical", data.categorical or []), ("data.drop", data.drop)):
        unknown = [c for c in listed if c not in types]
        if unknown:
            raise DataValidationError(
                f"{key}: column(s) {unknown} are not in the data; columns are {cols}"
            )
    if data.time_column is not None:
        if data.time_column not in types:
            raise DataValidationError(
                f"data.time_column: column {data.time_column!r} is not in the data; "
                f"columns are {cols}"
            )
        t = types[data.time_column]
        if not (pa.types.is_temporal(t) or _is_numeric_type(t) or pa.types.is_string(t)):
            raise DataValidationError(
                f"data.time_column: column {data.time_column!r} has type {t}; accepted: "
                "timestamp, date, number or ISO-8601 string"
            )
    if data.task == "regression" and not _is_numeric_type(types[data.target]):
        raise DataValidationError(
            f"data.target: regression needs a numeric target, but column {data.target!r} has "
            f"type {types[data.target]}; use task: binary or multiclass for labels"
        )

    skip = {data.target, *data.drop, *([data.time_column] if data.time_column else [])}
    explicit = set(data.categorical or [])
    numeric, categorical, dropped, notes = [], [], list(data.drop), []
    for c in cols:
        if c in skip:
            continue
        t = types[c]
        if c in explicit or (data.categorical is None and _is_categorical_type(t)):
            categorical.append(c)
        elif _is_numeric_type(t) and c not in explicit:
            numeric.append(c)
        elif data.categorical is not None and _is_categorical_type(t):
            numeric_hint = "list it in data.categorical or data.drop"
            raise DataValidationError(
                f"column {c!r} holds strings ({t}) but is not in data.categorical; {numeric_hint}"
            )
        else:
            dropped.append(c)
            notes.append(f"column {c!r} of type {t} is not a usable feature and was dropped")
    if not numeric and not categorical:
        raise DataValidationError(
            f"no feature columns left after removing target {data.target!r}, data.drop and "
            f"data.time_column; columns are {cols}"
        )
    return ColumnPlan(tuple(numeric), tuple(categorical), tuple(dropped), tuple(notes))


# Values read as the positive class of a binary target when `data.positive_class` is not set
# (compared as lower-case text): 1, true, yes, y, positive. Otherwise the lexically last class.
POSITIVE_WORDS = frozenset({"1", "true", "yes", "y", "positive"})
NEGATIVE_WORDS = frozenset({"0", "false", "no", "n", "negative"})


def _named(classes: list[Any], wanted: Any) -> list[Any]:
    """The classes `data.positive_class` names: the value itself, else the same text (a YAML
    `1` for a target of strings '1'/'0'), else for a YAML boolean (an unquoted yes/no/true/false
    in the config) the class that reads as that truth value."""
    exact = [c for c in classes if type(c) is type(wanted) and c == wanted]
    if exact:
        return exact
    if isinstance(wanted, bool):
        words = POSITIVE_WORDS if wanted else NEGATIVE_WORDS
        return [c for c in classes if str(c).strip().lower() in words]
    return [c for c in classes if str(c) == str(wanted)]


def binary_order(target: str, classes: list[Any], positive: Any = None) -> list[Any]:
    """[negative, positive] of a binary target: `data.positive_class` if given, else the one
    class that reads as positive (POSITIVE_WORDS), else the lexically last."""
    if positive is not None:
        named = _named(classes, positive)
        if len(named) != 1:
            raise DataValidationError(
                f"data.positive_class: {positive!r} is not one of target {target!r}'s classes "
                f"{classes}; name one of them (quote it in YAML: an unquoted yes/no is a boolean)"
            )
        i = classes.index(named[0])
    else:
        worded = [i for i, c in enumerate(classes) if str(c).strip().lower() in POSITIVE_WORDS]
        i = worded[0] if len(worded) == 1 else len(classes) - 1
    return [*classes[:i], *classes[i + 1 :], classes[i]]


def check_classes(
    task: str, target: str, counts: dict[Any, int], positive: Any = None
) -> list[Any]:
    """Validate the target's observed classes and return them in the model's order: the index is
    the encoded class. Multiclass: sorted. Binary: [negative, positive] (`binary_order`)."""
    if task == "regression":
        return []
    classes = sorted(counts, key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataValidationError(
            f"data.target: column {target!r} has a single class {classes} in the training split; "
            "a classifier needs at least two"
        )
    if task == "binary" and len(classes) != 2:
        shown = classes[:10]
        raise DataValidationError(
            f"data.target: task binary needs exactly two classes, but column {target!r} has "
            f"{len(classes)}: {shown}; use task: multiclass"
        )
    if task == "binary":
        return binary_order(target, classes, positive)
    return classes


def split_codes(
    df: pd.DataFrame,
    holdout: float,
    seed: int,
    time_column: str | None = None,
    time_cutoff: Any = None,
    *,
    target: str,
) -> np.ndarray:
    """TRAIN / VALID / HOLDOUT per row from a hash of its record (or its time).

    Hashing makes the split independent of file and block layout and keeps duplicate records on
    the same side, so the holdout cannot leak through duplicates. The hash leaves out `target`:
    hashed with its label, each repeated record would send its `yes` copies to one side and its
    `no` copies to another, so the holdout would hold the labels the model was not trained on
    (on a table of few distinct records and weak features: holdout AUC 0.37, an inverted model).
    """
    record = df.drop(columns=[target])
    h = pd.util.hash_pandas_object(
        record, index=False, hash_key=f"shipyard{seed:08d}"[:16]
    ).to_numpy()
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    codes = np.where(u < VALID_FRACTION, VALID, TRAIN)
    if time_column is None:
        # Independent bits for the holdout decision and the valid decision.
        u2 = ((h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)).astype(np.float64) / float(
            1 << 53
        )
        return np.where(u2 < holdout, HOLDOUT, codes).astype(np.int8)
    later = df[time_column].to_numpy() >= time_cutoff
    return np.where(later, HOLDOUT, codes).astype(np.int8)
