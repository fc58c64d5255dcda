from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipyard.demo import datagen


def test_deterministic_and_seeded() -> None:
    a, b = datagen.generate(2000, seed=1), datagen.generate(2000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(datagen.generate(2000, seed=2))


def test_mixed_types_missing_values_and_signal() -> None:
    df = datagen.generate(20000)
    assert set(datagen.CATEGORICAL) <= set(df.columns)
    assert df["income"].isna().mean() == pytest.approx(0.05, abs=0.01)
    assert df["channel"].isna().mean() == pytest.approx(0.02, abs=0.01)
    assert 0.3 < df[datagen.TARGET].mean() < 0.7
    # real signal: churn falls with sessions, and the noise column carries none
    hi, lo = df[df.sessions_30d > 16], df[df.sessions_30d < 8]
    assert lo[datagen.TARGET].mean() - hi[datagen.TARGET].mean() > 0.15
    corr = np.corrcoef(df["noise"], df[datagen.TARGET])[0, 1]
    assert abs(corr) < 0.03
    assert df[datagen.TIME_COLUMN].is_monotonic_increasing


@pytest.mark.parametrize("name", [n for n in datagen.SCENARIOS if n != "none"])
def test_scenarios_touch_only_their_features(name: str) -> None:
    base, shifted = datagen.generate(20000, seed=3), datagen.generate(20000, seed=3, scenario=name)
    sc = datagen.SCENARIOS[name]
    for col in datagen.NUMERIC + datagen.CATEGORICAL:
        if col in datagen.CATEGORICAL:
            a = base[col].value_counts(normalize=True, dropna=False)
            b = shifted[col].value_counts(normalize=True, dropna=False)
            diff = a.sub(b, fill_value=0).abs().sum()
        else:
            diff = abs(base[col].isna().mean() - shifted[col].isna().mean()) + abs(
                base[col].mean() - shifted[col].mean()
            ) / (base[col].std() or 1)
        if col in sc.touched:
            assert diff > 0.1, f"{name} should move {col}"
        else:
            assert diff < 0.05, f"{name} should not move {col} (moved {diff:.3f})"
    if sc.concept:  # same inputs, different labels
        assert (base[datagen.TARGET] != shifted[datagen.TARGET]).mean() > 0.1


def test_unknown_scenario_lists_accepted() -> None:
    with pytest.raises(ValueError, match="accepted"):
        datagen.generate(10, scenario="meteor")


def test_write_dataset_parquet_and_csv(tmp_path: Path) -> None:
    paths = datagen.write_dataset(tmp_path / "p", 1000, files=3)
    assert len(paths) == 3
    back = pd.concat(pd.read_parquet(p) for p in paths)
    assert len(back) == 1000 and back[datagen.ID_COLUMN].is_unique
    csv = datagen.write_dataset(tmp_path / "c", 100, files=1, fmt="csv")
    assert len(pd.read_csv(csv[0])) == 100
