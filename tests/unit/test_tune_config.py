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


def test_a_resumed_run_stops_and_is_trimmed_where_the_uninterrupted_run_is() -> None:
    """Early stopping carries over a checkpoint: the best round before a lost node is kept."""
    import numpy as np
    import xgboost as xgb

    from shipyard.training.fit import early_stopping

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + rng.normal(scale=2.0, size=600) > 0).astype(int)  # noisy: the best is early
    dtrain, dvalid = xgb.DMatrix(x[:400], label=y[:400]), xgb.DMatrix(x[400:], label=y[400:])
    params = {"objective": "binary:logistic", "eval_metric": "auc", "eta": 0.5, "max_depth": 6,
              "seed": 0, "nthread": 1}  # fmt: skip

    def boost(rounds: int, start: xgb.Booster | None = None) -> xgb.Booster:
        return xgb.train(params, dtrain, rounds, evals=[(dvalid, "valid")], xgb_model=start,
                         verbose_eval=False, callbacks=early_stopping(30, "auc"))  # fmt: skip

    whole = boost(300)
    best = int(whole.attr("best_iteration") or -1)
    assert whole.num_boosted_rounds() == best + 31 < 300  # stopped 30 rounds after its best
    checkpoint = xgb.Booster()
    checkpoint.load_model(bytearray(boost(best + 10).save_raw("ubj")))  # as a checkpoint
    resumed = boost(300 - (best + 10), checkpoint)
    assert int(resumed.attr("best_iteration") or -1) == best
    assert resumed.num_boosted_rounds() == whole.num_boosted_rounds()


def test_a_shard_of_blocks_with_empty_and_all_missing_ones_is_one_frame() -> None:
    import pyarrow as pa

    from shipyard.training.fit import blocks_frame

    full = pa.table({"x": pa.array([1.0, 2.0], pa.float32()), "label": [0, 1]})
    empty = pa.table({})  # what a split may leave behind: no rows, no columns
    missing = pa.table({"x": pa.nulls(1), "label": [1]})  # every x of the block missing
    df = blocks_frame([full, empty, missing])
    assert len(df) == 3 and list(df.columns) == ["x", "label"]
    assert df["x"].isna().tolist() == [False, False, True] and df["label"].tolist() == [0, 1, 1]
