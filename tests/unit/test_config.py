from pathlib import Path
from typing import Any

import pytest

from shipyard.config.base import parse_config
from shipyard.config.jobs import TrainJobConfig, load_train_config
from shipyard.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "model": {"name": "m"},
    "data": {"path": "d/*.parquet", "target": "y", "task": "binary"},
}


def test_demo_config_is_valid() -> None:
    cfg = load_train_config(REPO / "jobs/configs/demo.yaml")
    assert cfg.model.name == "churn"
    assert cfg.data.time_column == "ts"
    assert cfg.train.num_workers == 2


def test_defaults_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: m}\ndata: {path: x.csv, target: y, task: regression}\n")
    cfg = load_train_config(p, {"train.num_workers": 3, "gates.max_slice_gap": 0.3})
    assert cfg.train.num_workers == 3
    # 0: Ray Train's local mode, in the job's own process
    assert load_train_config(p, {"train.num_workers": 0}).train.num_workers == 0
    assert cfg.gates.max_slice_gap == 0.3
    assert cfg.data.holdout == 0.2


def _with(section: str, **kv: Any) -> dict[str, Any]:
    d = {k: dict(v) for k, v in GOOD.items()}
    d.setdefault(section, {}).update(kv)
    return d


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (_with("data", colour="red"), ["data.colour", "unknown key"]),
        (_with("train", num_workers="two"), ["train.num_workers", "'two'"]),
        (_with("train", num_workers=-1), ["train.num_workers", "greater than or equal to 0"]),
        (_with("data", task="ranking"), ["data.task", "'binary', 'multiclass' or 'regression'"]),
        (_with("data", holdout=1.5), ["data.holdout", "1.5"]),
        (_with("model", name="has space"), ["model.name", "has space"]),
        (_with("train", params={"objective": "reg:squarederror"}), ["train.params", "objective"]),
        (_with("data", categorical=["y"]), ["data", "'y'"]),
        ({"model": {"name": "m"}}, ["data", "Field required"]),
        ([1, 2], ["top level must be a mapping"]),
    ],
    ids=[
        "unknown-key", "wrong-type", "zero-workers", "bad-task", "holdout-range", "bad-name",
        "owned-param", "target-in-categorical", "missing-section", "not-a-mapping",
    ],
)  # fmt: skip
def test_bad_config_names_key_and_value(raw: object, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, TrainJobConfig, "test.yaml")
    for n in names:
        assert n in str(err.value)


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  name: m\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_train_config(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config("/nonexistent/config.yaml")


def test_override_into_scalar_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: m}\ndata: {path: x.csv, target: y, task: binary}\n")
    with pytest.raises(ConfigError, match="is not a section"):
        load_train_config(p, {"model.name.x": 1})
