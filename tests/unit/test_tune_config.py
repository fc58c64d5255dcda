"""The tuning job's config: the search space in YAML, errors that name the key."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.config.jobs import TuneJobConfig, load_tune_config
from shipyard.errors import ConfigError

BASE = {
    "model": {"name": "m"},
    "data": {"path": "x.parquet", "target": "y", "task": "binary"},
    "train": {"params": {"max_depth": 4, "eta": 0.1}},
}


def write(tmp_path: Path, tune: dict[str, Any]) -> Path:
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump({**BASE, "tune": tune}))
    return p


def test_space_becomes_ray_tune_domains(tmp_path: Path) -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    from shipyard.training.tuning import search_space

    cfg = load_tune_config(
        write(
            tmp_path,
            {
                "space": {
                    "eta": {"type": "loguniform", "low": 0.01, "high": 0.3},
                    "max_depth": {"type": "int", "low": 3, "high": 8},
                    "grow_policy": {"type": "choice", "values": ["depthwise", "lossguide"]},
                }
            },
        )
    )
    space = search_space(cfg.tune.space)
    assert isinstance(space["eta"], Float) and space["eta"].lower == 0.01
    assert isinstance(space["max_depth"], Integer)
    assert (space["max_depth"].lower, space["max_depth"].upper) == (3, 9)  # int is inclusive
    assert isinstance(space["grow_policy"], Categorical)


@pytest.mark.parametrize(
    "tune, message",
    [
        ({"space": {"eta": {"type": "loguniform", "low": 0, "high": 1}}}, "tune.space.eta"),
        ({"space": {"eta": {"type": "uniform", "low": 2, "high": 1}}}, "low < high"),
        ({"space": {"x": {"type": "choice"}}}, "non-empty `values`"),
        ({"space": {"objective": {"type": "choice", "values": [1]}}}, "objective"),
        ({"space": {"eta": {"type": "normal", "low": 0, "high": 1}}}, "tune.space.eta.type"),
        ({"searcher": "hyperopt"}, "tune.searcher"),
        ({"reduction_factor": 1}, "tune.reduction_factor"),
        ({"num_sample": 3}, "tune.num_sample: unknown key"),
    ],
)
def test_bad_tune_sections_name_the_key(tmp_path: Path, tune: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        load_tune_config(write(tmp_path, tune))


def test_best_params_go_through_the_training_config(tmp_path: Path) -> None:
    cfg = load_tune_config(write(tmp_path, {}))
    assert isinstance(cfg, TuneJobConfig) and cfg.tune.scheduler == "asha"
    train = cfg.train_config({"eta": 0.05, "subsample": 0.8})
    assert train.train.params == {"max_depth": 4, "eta": 0.05, "subsample": 0.8}
    assert not hasattr(train, "tune")


def test_finished_study_keeps_only_each_trials_newest_checkpoint(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ray.tune import Checkpoint

    from shipyard.training.tuning import prune_checkpoints

    results = []
    for trial in ("t1", "t2"):
        for i in range(3):
            (tmp_path / trial / f"checkpoint_00000{i}").mkdir(parents=True)
            (tmp_path / trial / f"checkpoint_00000{i}" / "model.ubj").write_bytes(b"x")
        (tmp_path / trial / "result.json").write_text("{}")
        newest = Checkpoint.from_directory(str(tmp_path / trial / "checkpoint_000002"))
        results.append(SimpleNamespace(checkpoint=newest, path=str(tmp_path / trial)))
    results.append(SimpleNamespace(checkpoint=None, path=str(tmp_path / "errored")))

    assert prune_checkpoints(results) == 4
    for trial in ("t1", "t2"):
        left = sorted(p.name for p in (tmp_path / trial).iterdir())
        assert left == ["checkpoint_000002", "result.json"]


@pytest.mark.parametrize("searcher", ["random", "optuna"])
def test_searchers_carry_the_concurrency_limit(searcher: str) -> None:
    """Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator (a warning
    only): the limit must be the search algorithm's own."""
    from shipyard.config.jobs import TuneSection
    from shipyard.training.tuning import make_searcher

    alg = make_searcher(TuneSection(searcher=searcher, max_concurrent_trials=2))
    assert alg.max_concurrent == 2
    assert make_searcher(TuneSection(searcher="random")).max_concurrent == 0  # unlimited
