"""Ray Tune over XGBoost parameters: the search space, one trial, the study, its summary.

Each trial boosts in its own Tune actor with the same booster parameters, seed and checkpoint
resume as training (`shipyard.training.fit`), reports the validation metric every `report_every`
rounds and checkpoints every `checkpoint_every`; ASHA stops poor trials at its rungs. A trial that
loses its node is retried from its last checkpoint; a driver that dies is picked up with
`--resume` from the experiment checkpoint. `jobs.tune` is the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import xgboost as xgb

from shipyard.config.jobs import SearchParam, TuneJobConfig
from shipyard.errors import ConfigError
from shipyard.registry import Registry, shipyard_home
from shipyard.training import fit

logger = logging.getLogger(__name__)

# The metric a trial reports and ASHA ranks: what the gates judge, on the validation split.
TUNE_METRIC = {task: (f"valid-{m}", mode, m) for task, (_, m, mode) in fit.OBJECTIVES.items()}


def search_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "choice":
            out[name] = tune.choice(list(p.values or []))
            continue
        low, high = float(p.low or 0), float(p.high or 0)  # validated: both set, low < high
        if p.type == "int":
            out[name] = tune.randint(int(low), int(high) + 1)  # upper bound exclusive
        elif p.type == "loguniform":
            out[name] = tune.loguniform(low, high)
        else:
            out[name] = tune.uniform(low, high)
    return out


# Beside each trial checkpoint's booster: how far it got and where (the node that wrote it), read
# without the driver: a trial's rows in result.json pass through the driver, which may write them
# late.
PROGRESS_FILE = "progress.json"
INT_PARAMS = ("max_depth", "max_leaves", "max_bin", "num_parallel_tree")


def booster_ready(config: dict[str, Any]) -> dict[str, Any]:
    """A sampled config as XGBoost takes it: integer parameters as ints (a YAML `choice` or a
    searcher may hand back 6.0), for the trials and for the best trial's final training alike."""
    return {k: int(v) if k in INT_PARAMS else v for k, v in config.items()}


def _booster_params(cfg: TuneJobConfig, n_classes: int) -> dict[str, Any]:
    t = cfg.tune
    return fit.booster_params(cfg.data.task, cfg.train.params, n_classes,
                              int(t.cpus_per_trial), t.gpus_per_trial > 0, cfg.data.seed)  # fmt: skip


def trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One trial: boost from its checkpoint (if retried) to `max_rounds` or until ASHA stops it."""
    from ray import tune

    base, study = data["params"], data["study"]
    params = {**base, **booster_ready(config)}
    dtrain = xgb.DMatrix(data["x_train"], label=data["y_train"], feature_names=data["names"])
    dvalid = xgb.DMatrix(data["x_valid"], label=data["y_valid"], feature_names=data["names"])
    start: xgb.Booster | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry or a resumed study: continue, do not start over

        def load() -> xgb.Booster:
            with checkpoint.as_directory() as d:
                return xgb.Booster(model_file=str(Path(d) / "model.ubj"))

        start = fit.resume_from(load)
    done = start.num_boosted_rounds() if start is not None else 0
    resumed_from = done
    node_id = ray.get_runtime_context().get_node_id()  # where this attempt runs (spot or not)

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            rounds = model.num_boosted_rounds()
            if rounds % study["report_every"] and rounds < study["max_rounds"]:
                return False
            value = float(evals_log["valid"][study["metric_name"]][-1])
            metrics = {
                study["metric"]: value,
                "rounds": rounds,
                "resumed_from": resumed_from,
                "node_id": node_id,
            }
            if rounds % study["checkpoint_every"] == 0 or rounds >= study["max_rounds"]:
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_model(str(Path(tmp) / "model.ubj"))
                    progress = {k: metrics[k] for k in ("rounds", "resumed_from", "node_id")}
                    (Path(tmp) / PROGRESS_FILE).write_text(json.dumps(progress))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                tune.report(metrics)
            return False

    metric = params["eval_metric"]
    xgb.train(
        params,
        dtrain,
        num_boost_round=max(0, study["max_rounds"] - done),
        evals=[(dvalid, "valid")],
        xgb_model=start,
        verbose_eval=False,
        # The report first: a round that stops the trial is still reported.
        callbacks=[Report(), *fit.early_stopping(study["early_stopping_rounds"], metric)],
    )


def load_arrays(cfg: TuneJobConfig) -> tuple[dict[str, Any], Any]:
    """Prepare the data once (the same path as jobs.train) and hold the arrays for every trial."""
    from shipyard.training import data as data_mod

    prep = data_mod.prepare(cfg.data)
    return data_mod.to_arrays(prep), prep


def study_dir(cfg: TuneJobConfig) -> tuple[str, str]:
    storage = cfg.tune.storage_path or str(shipyard_home() / "tune")
    return storage, cfg.tune.name or f"{cfg.model.name}-tune"


def make_searcher(t: Any) -> Any:
    """The search algorithm, with `tune.max_concurrent_trials` built in. Tune 2.60 ignores
    `TuneConfig(max_concurrent_trials=...)` (a warning only) when the search algorithm is a
    BasicVariantGenerator, so the limit has to be the generator's own."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if t.searcher == "optuna":
        searcher: Any = OptunaSearch(seed=t.seed)
        if t.max_concurrent_trials:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=t.max_concurrent_trials)
        return searcher
    return BasicVariantGenerator(random_state=t.seed, max_concurrent=t.max_concurrent_trials or 0)


def run_study(
    cfg: TuneJobConfig, arrays: dict[str, Any], n_classes: int = 0, resume: bool = False
) -> Any:
    """Run (or resume) the Tune study; returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    metric, mode, metric_name = TUNE_METRIC[cfg.data.task]
    data = {
        **arrays,
        "params": _booster_params(cfg, n_classes),
        "study": {
            "metric": metric,
            "metric_name": metric_name,
            "max_rounds": t.max_rounds,
            "report_every": t.report_every,
            "checkpoint_every": t.checkpoint_every,
            "early_stopping_rounds": cfg.train.early_stopping_rounds if t.early_stopping else None,
        },
    }
    resources = {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(trial, data=data), resources)
    storage, name = study_dir(cfg)
    path = os.path.join(storage, name)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: no Tune experiment to resume at {path!r}")
        logger.info("resuming study %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        return tuner.fit()

    if t.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="rounds",
            max_t=t.max_rounds,
            grace_period=t.grace_period,
            reduction_factor=t.reduction_factor,
        )
    else:
        fifo: Any = FIFOScheduler  # untyped in Ray
        scheduler = fifo()
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(t.space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=t.num_samples,
            scheduler=scheduler,
            search_alg=make_searcher(t),  # it carries the concurrency limit
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            # Keep every checkpoint while the study runs: with `num_to_keep`, Tune deletes a
            # trial's older checkpoint before its next experiment snapshot stops pointing at it,
            # so a driver killed in between resumes onto a deleted checkpoint (seen in CI).
            # `prune_checkpoints` keeps only the newest once the study has finished.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=1,
        ),
    )
    return tuner.fit()


def prune_checkpoints(grid: Any) -> int:
    """After a finished study, delete every trial checkpoint but its newest (which the final
    experiment snapshot points at); returns how many were deleted. Works on any storage."""
    from pyarrow.fs import FileSelector, FileType

    deleted = 0
    for r in grid:
        if r.checkpoint is None:
            continue
        fs = r.checkpoint.filesystem
        for info in fs.get_file_info(FileSelector(r.path)):
            if (
                info.type == FileType.Directory
                and info.base_name.startswith("checkpoint_")
                and info.path.rstrip("/") != r.checkpoint.path.rstrip("/")
            ):
                fs.delete_dir(info.path)
                deleted += 1
    return deleted


def summarize(grid: Any, metric: str, mode: str) -> dict[str, Any]:
    """Per trial: its best reported metric (and at how many rounds), rounds run, errors."""
    trials = []
    for r in grid:
        m = r.metrics or {}
        best, best_rounds = m.get(metric), m.get("rounds")
        df = r.metrics_dataframe
        if df is not None and metric in df and len(df):
            i = df[metric].idxmax() if mode == "max" else df[metric].idxmin()
            best, best_rounds = float(df[metric][i]), int(df["rounds"][i])
        trials.append(
            {
                "trial_id": m.get("trial_id"),
                "config": r.config,
                "metric": best,
                "best_rounds": best_rounds,
                "rounds": m.get("rounds"),
                "resumed_from": m.get("resumed_from"),
                "error": str(r.error)[:500] if r.error else None,
            }
        )
    scored = [x for x in trials if x["metric"] is not None and x["error"] is None]
    pick = max if mode == "max" else min
    best_trial = pick(scored, key=lambda x: x["metric"]) if scored else None
    return {
        "trials": trials,
        "best": best_trial,
        "errors": sum(1 for x in trials if x["error"]),
        "rounds_total": sum(int(x["rounds"] or 0) for x in trials),
    }


def log_trials(
    registry: Registry, experiment_id: str, study_run: str, summary: dict[str, Any], metric: str
) -> None:
    """Every trial as a child run of the study, once (a resumed study does not log twice)."""
    logged = {
        r.data.tags.get("shipyard.trial_id")
        for r in registry.client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{study_run}'", max_results=10000
        )
    }
    for x in summary["trials"]:
        if x["trial_id"] in logged:
            continue
        run = registry.start_run(
            experiment_id,
            f"trial-{x['trial_id']}",
            tags={
                "mlflow.parentRunId": study_run,
                "shipyard.trial_id": str(x["trial_id"]),
                "shipyard.kind": "trial",
            },
        )
        registry.log(
            run,
            params=x["config"],
            metrics={metric.replace("-", "_"): x["metric"], "rounds": x["rounds"]},
            tags={"shipyard.error": x["error"]} if x["error"] else None,
        )
        registry.end_run(run, "FAILED" if x["error"] else "FINISHED")
