import json

import numpy as np
import pandas as pd
import pytest

from shipyard.bundle.profile import ProfileAccumulator, quantile_edges, reference_profile
from shipyard.bundle.schema import Feature, InputSchema
from shipyard.demo import datagen
from shipyard.errors import InvalidInput

SCHEMA = InputSchema(
    task="binary",
    target="y",
    features=(Feature("x", "numeric"), Feature("c", "categorical", ("a", "b"))),
    classes=(0, 1),
)


def test_encode_maps_unseen_and_missing_to_nan() -> None:
    df = pd.DataFrame({"x": [1.5, None, 3], "c": ["b", None, "zzz"]})
    x = SCHEMA.encode(df)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 1], [1.0, np.nan, np.nan])
    assert np.isnan(x[1, 0]) and x[0, 0] == 1.5


def test_encode_requires_every_feature() -> None:
    with pytest.raises(InvalidInput, match=r"missing feature column\(s\) \['c'\]"):
        SCHEMA.encode(pd.DataFrame({"x": [1.0]}))


def test_encode_target() -> None:
    assert SCHEMA.encode_target(pd.Series([1, 0, 1])).tolist() == [1, 0, 1]
    with pytest.raises(InvalidInput, match="not trained on"):
        SCHEMA.encode_target(pd.Series([2]))


def test_json_round_trip() -> None:
    again = InputSchema.from_dict(json.loads(SCHEMA.to_json()))
    assert again == SCHEMA
    with pytest.raises(ValueError, match="format_version"):
        InputSchema.from_dict({**SCHEMA.to_dict(), "format_version": 99})


def test_quantile_edges() -> None:
    edges = quantile_edges(np.arange(1000.0), 10)
    assert len(edges) == 9 and edges == sorted(edges)
    assert quantile_edges(np.ones(100)) == [1.0]
    assert quantile_edges(np.array([np.nan])) == []


def test_profile_merges_exactly() -> None:
    df = datagen.generate(6000)
    edges = {c: quantile_edges(df[c].to_numpy()) for c in datagen.NUMERIC}
    whole = ProfileAccumulator.create(edges, datagen.CATEGORICAL)
    whole.update(df)
    parts = ProfileAccumulator.create(edges, datagen.CATEGORICAL)
    for chunk in np.array_split(np.arange(len(df)), 7):
        p = ProfileAccumulator.create(edges, datagen.CATEGORICAL)
        p.update(df.iloc[chunk])
        parts.merge(ProfileAccumulator.from_dict(json.loads(json.dumps(p.to_dict()))))
    a, b = whole.to_dict(), parts.to_dict()
    assert a["rows"] == b["rows"] == 6000
    for col in datagen.NUMERIC:
        assert a["columns"][col]["counts"] == b["columns"][col]["counts"]
        assert a["columns"][col]["missing"] == b["columns"][col]["missing"]
        assert a["columns"][col]["mean"] == pytest.approx(b["columns"][col]["mean"], rel=1e-12)
        assert a["columns"][col]["std"] == pytest.approx(b["columns"][col]["std"], rel=1e-9)
    for col in datagen.CATEGORICAL:
        assert a["columns"][col]["counts"] == b["columns"][col]["counts"]
    income = a["columns"]["income"]
    assert income["missing_rate"] == pytest.approx(df["income"].isna().mean())
    assert sum(income["counts"]) + income["missing"] == 6000
    assert income["mean"] == pytest.approx(df["income"].mean())


def test_merge_rejects_different_edges() -> None:
    a = ProfileAccumulator.create({"x": [1.0]}, [])
    b = ProfileAccumulator.create({"x": [2.0]}, [])
    with pytest.raises(ValueError, match="different bin edges"):
        a.merge(b)


def test_reference_profile_holds_schema_features() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, None], "c": ["a", "b", None], "y": [0, 1, 0]})
    acc = ProfileAccumulator.create({"x": [1.5]}, ["c"])
    acc.update(df)
    ref = reference_profile(acc, SCHEMA, {"kind": "numeric"})
    assert set(ref["features"]) == {"x", "c"}
    assert ref["features"]["c"]["frequencies"] == {"a": 0.5, "b": 0.5}
    assert ref["features"]["x"]["counts"] == [1, 1]
