"""Model fitting: XGBoost through Ray Train's XGBoostTrainer, and the baseline every run beats."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
import xgboost as xgb

from shipyard.bundle.schema import InputSchema
from shipyard.config.jobs import TrainSection
from shipyard.errors import DataValidationError
from shipyard.training import dataspec

logger = logging.getLogger(__name__)

# Objective, and the validation metric that early stopping (training) and the scheduler
# (tuning) both watch, with its direction: the metric the gates judge where XGBoost has it.
OBJECTIVES = {
    "binary": ("binary:logistic", "auc", "max"),
    "multiclass": ("multi:softprob", "mlogloss", "min"),
    "regression": ("reg:squarederror", "rmse", "min"),
}


def eval_metric(task: str) -> str:
    return OBJECTIVES[task][1]


def booster_params(
    task: str,
    params: dict[str, Any],
    n_classes: int,
    nthread: int,
    use_gpu: bool,
    seed: int,
) -> dict[str, Any]:
    """XGBoost parameters for training and for every tuning trial alike: the config's (or the
    trial's) parameters plus what Shipyard derives from the task and the resources."""
    objective, metric, _ = OBJECTIVES[task]
    out: dict[str, Any] = {
        "tree_method": "hist",
        "seed": seed,
        **params,
        "objective": objective,
        "eval_metric": metric,
        "nthread": max(1, nthread),
        "device": "cuda" if use_gpu else "cpu",
    }
    if task == "multiclass":
        out["num_class"] = n_classes
    return out


def train_params(cfg: TrainSection, schema: InputSchema, seed: int) -> dict[str, Any]:
    return booster_params(
        schema.task, cfg.params, len(schema.classes), int(cfg.cpus_per_worker), cfg.use_gpu, seed
    )


def resume_from(load: Any) -> xgb.Booster | None:
    """The booster a resumed attempt continues from: `load()` reads the checkpoint's model. A
    checkpoint cut short (its writer was killed mid-copy) means starting over, not failing:
    the result is the same, only the time is lost."""
    try:
        booster: xgb.Booster | None = load()
        return booster
    except (OSError, xgb.core.XGBoostError) as err:
        logger.warning("unreadable checkpoint (%s); starting over", err)
        return None


class ResumingEarlyStopping(xgb.callback.EarlyStopping):
    """XGBoost's early stopping, continued where a checkpointed run left off.

    XGBoost starts a continued run's early stopping afresh: its first round counts as the best
    so far, whatever the checkpoint's `best_score`. A run resumed after a lost node then forgets
    a better round from before the loss, waits `rounds` more rounds from the resume and is
    trimmed to a later, worse round (seen: a run resumed at round 2,300 of 3,000 registered
    2,425 trees where 17 were best, and failed its baseline gate). Here the
    checkpoint's best score, best round and the rounds since it carry over, so a resumed run
    stops and is trimmed where the uninterrupted one would have been.
    """

    def before_training(self, model: Any) -> Any:
        model = super().before_training(model)
        best_score, best_round = model.attr("best_score"), model.attr("best_iteration")
        if self.starting_round and best_score is not None and best_round is not None:
            name, metric = str(self.data), str(self.metric_name)
            self.stopping_history = {name: {metric: [float(best_score)]}}
            self.best_scores = {name: {metric: [float(best_score)]}}
            self.current_rounds = self.starting_round - 1 - int(best_round)
        return model


def early_stopping(rounds: int | None, metric: str) -> list[xgb.callback.TrainingCallback]:
    """The early-stopping callback for a run on the `valid` set (none when `rounds` is None)."""
    if rounds is None:
        return []
    return [ResumingEarlyStopping(rounds=rounds, metric_name=metric, data_name="valid")]


# Ray Train V2 hands each report to its controller through a queue of one, which the controller
# drains when it polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s): every
# checkpoint after the first blocks boosting until the next poll. At 2 s, 25 checkpoints of a
# small run waited 50 s on an idle CPU; a quarter second costs the controller a few cheap calls.
REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_S = "0.25"


def _report_callback(metrics: dict[str, str], frequency: int, resumed_from: int) -> Any:
    """Ray's XGBoost callback, reporting only with checkpoints.

    The stock callback calls `ray.train.report` after every round, a synchronous round trip
    through the Train controller that costs far more than a boosting round on small data. Every
    report also says from which round this attempt started (0, or a checkpoint's round after a
    worker or node loss).
    """
    from ray.train.xgboost import RayTrainReportCallback

    class CheckpointReportCallback(RayTrainReportCallback):  # type: ignore[misc]
        def _save_and_report_checkpoint(self, report_dict: dict[str, Any], model: Any) -> None:
            # Also the end-of-training report, which has no metrics when a run resumed from
            # a checkpoint taken at its last round.
            super()._save_and_report_checkpoint(
                {**report_dict, "resumed_from": resumed_from}, model
            )

        def _report_metrics(self, report_dict: dict[str, Any]) -> None:
            return None

    return CheckpointReportCallback(metrics=metrics, frequency=frequency)


def shards(ds: ray.data.Dataset, n: int, split: str) -> list[list[Any]]:
    """A materialised dataset cut into `n` contiguous shards of near-equal row counts (none
    dropped), each the list of its Arrow blocks' object refs.

    Ray Train's own dataset path starts a streaming-split coordinator per dataset and streams
    the blocks to the workers again; for data already materialised that is seconds of fixed
    cost per run for nothing. The refs stay owned by the driver, so a worker group restarted
    after a worker or node loss reads the same shards (lost blocks are rebuilt from lineage).
    """
    rows = ds.count()
    if rows < n:
        raise DataValidationError(
            f"the {split} split has {rows} rows, fewer than train.num_workers={n}: "
            f"set train.num_workers to at most {max(rows, 1)} or give more data"
        )
    cuts = [rows * i // n for i in range(1, n)]
    parts = ds.split_at_indices(cuts) if cuts else [ds]
    return [part.to_arrow_refs() for part in parts]


def shard_frame(refs: list[Any]) -> pd.DataFrame:
    """One worker's shard (from `shards`) as a DataFrame."""
    return blocks_frame(ray.get(list(refs)))


def blocks_frame(blocks: list[pa.Table]) -> pd.DataFrame:
    """Arrow blocks as one DataFrame. A split can leave a block with no rows and no columns, and
    a block whose values in a column are all missing has that column typed null: neither may
    stop the concatenation (seen: "Schema at index 4 was different: ... vs <empty>")."""
    tables = [b for b in blocks if b.num_rows] or list(blocks[:1])
    frame: pd.DataFrame = pa.concat_tables(tables, promote_options="default").to_pandas()
    return frame


def _train_loop(config: dict[str, Any]) -> tuple[xgb.Booster, float | None] | None:
    """Runs on every Ray Train worker; XGBoost's collective is set up by the trainer. In local
    mode (`num_workers: 0`, the job's own process) nothing is checkpointed: the booster and the
    last validation metric are returned instead."""
    import ray.train
    from ray.train.xgboost import RayTrainReportCallback

    names = config["feature_names"]
    rank = ray.train.get_context().get_world_rank()

    def dmatrix(split: str) -> xgb.DMatrix:
        df = shard_frame(config["shards"][split][rank])
        return xgb.DMatrix(
            df[names].to_numpy(np.float32),
            label=df[dataspec.LABEL_COLUMN].to_numpy(),
            feature_names=names,
        )

    dtrain, dvalid = dmatrix("train"), dmatrix("valid")
    start: xgb.Booster | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resumed after a worker or node loss: continue, not restart
        start = resume_from(lambda: RayTrainReportCallback.get_model(checkpoint))
    done = start.num_boosted_rounds() if start is not None else 0
    metric = config["params"]["eval_metric"]
    report = (
        []
        if config["local"]
        else [  # first: a round that stops the run is still reported
            _report_callback({"valid_metric": f"valid-{metric}"}, config["checkpoint_every"], done)
        ]
    )
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        config["params"],
        dtrain,
        num_boost_round=max(0, config["num_boost_round"] - done),
        evals=[(dvalid, "valid")],
        evals_result=history,
        xgb_model=start,
        verbose_eval=False,
        callbacks=[*report, *early_stopping(config["early_stopping_rounds"], metric)],
    )
    if not config["local"]:
        return None
    last = history.get("valid", {}).get(metric)
    return booster, (last[-1] if last else None)


@dataclasses.dataclass
class TrainOutcome:
    booster: xgb.Booster  # trimmed to the best iteration
    rounds: int
    best_iteration: int
    checkpoint_path: str | None  # None in local mode (`num_workers: 0`): nothing checkpointed
    valid_metric: float | None  # the early-stopping metric (`eval_metric(task)`) at the end
    resumed_from: int  # 0, or the checkpoint round the last attempt resumed from


def train_xgboost(
    train: ray.data.Dataset,
    valid: ray.data.Dataset,
    schema: InputSchema,
    cfg: TrainSection,
    storage_path: str,
    run_name: str,
    seed: int = 0,
) -> TrainOutcome:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_S)  # read by the trainer, sent to workers
    local = cfg.num_workers == 0  # Ray Train's local mode: the loop runs in this process
    n = max(cfg.num_workers, 1)
    trainer = XGBoostTrainer(
        _train_loop,
        train_loop_config={
            "params": train_params(cfg, schema, seed),
            "feature_names": schema.names,
            "num_boost_round": cfg.num_boost_round,
            "early_stopping_rounds": cfg.early_stopping_rounds,
            "checkpoint_every": cfg.checkpoint_every,
            "local": local,
            "shards": {"train": shards(train, n, "train"), "valid": shards(valid, n, "valid")},
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if local:
        booster, valid_metric = result.return_value
        return _outcome(booster, None, valid_metric, 0)
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (error: {result.error})")
    metrics = result.metrics or {}
    return _outcome(
        RayTrainReportCallback.get_model(result.checkpoint),
        str(Path(result.checkpoint.path)),
        metrics.get("valid_metric"),
        int(metrics.get("resumed_from") or 0),
    )


def _outcome(
    booster: xgb.Booster, checkpoint: str | None, valid_metric: float | None, resumed_from: int
) -> TrainOutcome:
    """The run's booster trimmed to its best iteration (early stopping), with what it took."""
    rounds = booster.num_boosted_rounds()
    best = int(booster.attr("best_iteration") or rounds - 1)
    return TrainOutcome(
        booster=booster[: best + 1] if best + 1 < rounds else booster,
        rounds=rounds,
        best_iteration=best,
        checkpoint_path=checkpoint,
        valid_metric=valid_metric,
        resumed_from=resumed_from,
    )


def fit_baseline(sample: pd.DataFrame, schema: InputSchema, seed: int) -> Any:
    """Logistic / ridge regression on imputed, scaled numbers and one-hot categories.

    Only its metrics are kept: a baseline is a yardstick, not a servable artifact.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [f.name for f in schema.features if f.kind == "numeric"]
    cat = [f.name for f in schema.features if f.kind == "categorical"]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="<missing>"),
                    OneHotEncoder(handle_unknown="ignore", max_categories=50),
                ),
                cat,
            ),
        ]
    )
    model = (
        Ridge(alpha=1.0)
        if schema.task == "regression"
        else LogisticRegression(max_iter=500, random_state=seed)
    )
    pipe = make_pipeline(pre, model)
    pipe.fit(baseline_frame(sample, schema), schema.encode_target(sample[schema.target]))
    return pipe


def baseline_frame(df: pd.DataFrame, schema: InputSchema) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for f in schema.features:
        if f.kind == "numeric":
            out[f.name] = pd.to_numeric(df[f.name], errors="coerce").astype(np.float64)
        else:
            out[f.name] = (
                df[f.name].astype("string").astype(object).where(df[f.name].notna(), np.nan)
            )
    return out


def baseline_predict(model: Any, df: pd.DataFrame, schema: InputSchema) -> np.ndarray:
    x = baseline_frame(df, schema)
    if schema.task == "regression":
        return np.asarray(model.predict(x))
    proba = np.asarray(model.predict_proba(x))
    return proba[:, 1] if schema.task == "binary" else proba
