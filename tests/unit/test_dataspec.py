from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shipyard.config.jobs import DataSection
from shipyard.demo import datagen
from shipyard.errors import DataValidationError
from shipyard.training import dataspec

SCHEMA = pa.schema(
    [("id", pa.int64()), ("ts", pa.timestamp("ms")), ("x", pa.float64()), ("n", pa.int32()),
     ("c", pa.string()), ("flag", pa.bool_()), ("y", pa.int64()), ("label", pa.string())]
)  # fmt: skip


def data(**kw: object) -> DataSection:
    return DataSection(**{"path": "p", "target": "y", "task": "binary", **kw})


def test_infers_kinds_and_drops() -> None:
    plan = dataspec.plan_columns(SCHEMA, data(drop=["id", "label"], time_column="ts"))
    assert plan.numeric == ("x", "n")
    assert plan.categorical == ("c", "flag")
    assert "id" in plan.dropped


def test_explicit_categorical_can_be_numeric_typed() -> None:
    plan = dataspec.plan_columns(SCHEMA, data(categorical=["n", "c", "flag", "label"], drop=["id"]))
    assert set(plan.categorical) == {"n", "c", "flag", "label"}
    assert plan.numeric == ("x",)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target": "nope"}, r"data.target: column 'nope' is not in the data; columns are \["),
        ({"categorical": ["c", "zz"]}, r"data.categorical: column\(s\) \['zz'\]"),
        ({"drop": ["qq"]}, r"data.drop: column\(s\) \['qq'\]"),
        ({"time_column": "when"}, r"data.time_column: column 'when'"),
        ({"target": "label", "task": "regression"}, r"regression needs a numeric target.*'label'"),
        ({"categorical": ["c"], "drop": ["id", "flag"]}, r"'label' holds strings"),
    ],
    ids=["missing-target", "unknown-categorical", "unknown-drop", "missing-time", "regression-str", "undeclared-strings"],
)  # fmt: skip
def test_plan_errors_name_the_column(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(DataValidationError, match=match):
        dataspec.plan_columns(SCHEMA, data(**kw))


def test_no_features_left() -> None:
    s = pa.schema([("y", pa.int64()), ("id", pa.int64())])
    with pytest.raises(DataValidationError, match="no feature columns"):
        dataspec.plan_columns(s, data(drop=["id"]))


def test_classes() -> None:
    assert dataspec.check_classes("binary", "y", {1: 5, 0: 7}) == [0, 1]
    assert dataspec.check_classes("multiclass", "y", {"b": 1, "a": 2, "c": 3}) == ["a", "b", "c"]
    with pytest.raises(DataValidationError, match="single class"):
        dataspec.check_classes("binary", "y", {1: 10})
    with pytest.raises(DataValidationError, match="exactly two classes.*3"):
        dataspec.check_classes("binary", "y", {0: 1, 1: 1, 2: 1})


def test_random_split_is_stable_and_layout_free() -> None:
    df = datagen.generate(50000)
    codes = dataspec.split_codes(df, 0.2, seed=0, target="churned")
    frac = np.bincount(codes, minlength=3) / len(codes)
    assert frac[dataspec.HOLDOUT] == pytest.approx(0.2, abs=0.01)
    assert frac[dataspec.VALID] == pytest.approx(0.08, abs=0.01)
    shuffled = df.sample(frac=1.0, random_state=1)
    again = pd.Series(
        dataspec.split_codes(shuffled, 0.2, seed=0, target="churned"), index=shuffled.index
    )
    assert (again.sort_index().to_numpy() == codes).all()
    assert (dataspec.split_codes(df, 0.2, seed=1, target="churned") != codes).mean() > 0.2


def test_duplicate_rows_stay_together() -> None:
    df = datagen.generate(500)
    doubled = pd.concat([df, df], ignore_index=True)
    codes = dataspec.split_codes(doubled, 0.3, seed=0, target="churned")
    assert (codes[:500] == codes[500:]).all()


def test_a_repeated_record_goes_to_one_side_whatever_its_label() -> None:
    """The split hashes the record without its target. Hashed with it, the `yes` copies of a
    repeated record went to one side and its `no` copies to another: on a table of few distinct
    records the holdout held exactly the labels training lacked (holdout AUC 0.37, inverted)."""
    rng = np.random.default_rng(0)
    n = 20000
    df = pd.DataFrame({"a": rng.integers(0, 8, n), "b": rng.choice(["x", "y", "z"], n)})
    df["late"] = np.where(rng.random(n) < 0.3 + 0.05 * df["a"], "yes", "no")  # weak signal
    codes = dataspec.split_codes(df, 0.25, seed=0, target="late")
    # Every copy of a record is on the same side, whatever its label ...
    sides = pd.Series(codes).groupby([df["a"], df["b"]]).nunique()
    assert (sides == 1).all()
    flipped = df.assign(late=np.where(df["late"] == "yes", "no", "yes"))
    assert (dataspec.split_codes(flipped, 0.25, seed=0, target="late") == codes).all()
    # ... so each side sees the labels the signal gives (hashed with the label, each side saw
    # only `yes` or only `no` for most records, and the holdout's rates were not training's).
    rate = (df["late"] == "yes").groupby(df["a"]).mean()
    held = codes == dataspec.HOLDOUT
    assert held.any() and (~held).any()
    for part in (held, ~held):
        seen = (df["late"][part] == "yes").groupby(df["a"][part]).mean()
        assert np.allclose(seen, rate[seen.index], atol=0.05)


def test_time_split_holds_out_the_latest_rows() -> None:
    df = datagen.generate(5000)
    cutoff = df["ts"].quantile(0.8, interpolation="higher")
    codes = dataspec.split_codes(df, 0.2, 0, "ts", cutoff, target="churned")
    held = df["ts"][codes == dataspec.HOLDOUT]
    assert held.min() >= df["ts"][codes != dataspec.HOLDOUT].max()
    assert (codes == dataspec.HOLDOUT).mean() == pytest.approx(0.2, abs=0.01)
