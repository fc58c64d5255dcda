"""`make bench` (tuning): ASHA against a full random search over the same trials, and Tune's overhead.

The same K configurations (sampled once from the tuning job's default space (shipyard.training.tuning) with a fixed seed) on the
same prepared data, each run by `jobs.tune.trial` — the code the tuning job runs:

  (a) full random search: FIFO, every trial to `max_rounds`         (the baseline)
  (b) ASHA (grace `--grace-period`, default 30 like jobs.tune; reduction 3) over the same trials
  (c) Tune FIFO with one trial at a time  vs  the same trials back to back in one process
      (plain xgb.train with the same reporting cadence): Tune's scheduling overhead per trial

Reported: best validation AUC of each, boosting rounds used, wall time, and the ratios.
`--rows` scales the data, `--trials` the number of configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from benchmarks.run import machine


def sample_configs(k: int, seed: int) -> list[dict[str, Any]]:
    """K configurations from the tuning job's default space (shipyard.training.tuning) (its own Ray Tune domains), seeded."""
    from shipyard.config.jobs import TuneSection
    from shipyard.training.tuning import search_space

    space = search_space(TuneSection().space)
    rng = np.random.default_rng(seed)
    return [{name: d.sample(random_state=rng) for name, d in space.items()} for _ in range(k)]


def indexed_trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    from shipyard.training.tuning import trial

    trial(data["configs"][config["i"]], data)


def run_tune(
    data: dict[str, Any], k: int, scheduler: Any, concurrent: int | None, storage: str
) -> dict[str, Any]:
    from ray import tune

    metric = data["study"]["metric"]
    trainable = tune.with_resources(tune.with_parameters(indexed_trial, data=data), {"cpu": 1})
    t0 = time.perf_counter()
    grid = tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(range(k)))},
        tune_config=tune.TuneConfig(
            metric=metric, mode="max", scheduler=scheduler, max_concurrent_trials=concurrent
        ),
        run_config=tune.RunConfig(storage_path=storage, name=f"bench-{time.time_ns()}", verbose=0),
    ).fit()
    wall = time.perf_counter() - t0
    best, rounds = [], 0
    results: Any = grid  # ResultGrid is iterable; Ray types it without __iter__
    for r in results:
        df = r.metrics_dataframe
        best.append(float(df[metric].max()))
        rounds += int(df["rounds"].max())
    return {
        "best_auc": max(best),
        "rounds": rounds,
        "wall_s": wall,
        "errors": sum(bool(r.error) for r in results),
    }


def run_plain(data: dict[str, Any], k: int) -> dict[str, Any]:
    """The same trials back to back in this process: no Tune, no actors, same reporting cadence."""
    study = data["study"]
    dtrain = xgb.DMatrix(data["x_train"], label=data["y_train"], feature_names=data["names"])
    dvalid = xgb.DMatrix(data["x_valid"], label=data["y_valid"], feature_names=data["names"])
    t0 = time.perf_counter()
    best = []
    for cfg in data["configs"][:k]:
        params = {**data["params"], **cfg}
        log: dict[str, Any] = {}
        xgb.train(params, dtrain, num_boost_round=study["max_rounds"], evals=[(dvalid, "valid")],
                  evals_result=log, verbose_eval=False)  # fmt: skip
        aucs = log["valid"]["auc"][study["report_every"] - 1 :: study["report_every"]]
        best.append(max(aucs))
    return {
        "best_auc": max(best),
        "rounds": k * study["max_rounds"],
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="tuning")
    ap.add_argument("--grace-period", type=int, default=30, help="ASHA grace period (rounds)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    fifo: Any = FIFOScheduler  # untyped in Ray

    from shipyard.config.jobs import DataSection
    from shipyard.demo import datagen
    from shipyard.training import data as data_mod
    from shipyard.training.tuning import TUNE_METRIC

    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        datagen.write_dataset(Path(tmp) / "data", args.rows, seed=0, files=2)
        section = DataSection(
            path=f"{tmp}/data/*.parquet", target="churned", task="binary",
            drop=["customer_id"], time_column="ts", holdout=0.2,
        )  # fmt: skip
        prep = data_mod.prepare(section)
        metric, _, name = TUNE_METRIC["binary"]
        data = {
            **data_mod.to_arrays(prep),
            "configs": sample_configs(args.trials, seed=0),
            "params": {
                "tree_method": "hist",
                "objective": "binary:logistic",
                "eval_metric": name,
                "nthread": 1,
                "device": "cpu",
                "seed": 0,
            },
            "study": {
                "metric": metric,
                "metric_name": name,
                "max_rounds": args.max_rounds,
                "report_every": 5,
                "checkpoint_every": 10,
            },
        }
        k, storage = args.trials, f"{tmp}/tune"
        full = run_tune(data, k, fifo(), None, storage)
        asha_scheduler = ASHAScheduler(
            time_attr="rounds",
            max_t=args.max_rounds,
            grace_period=args.grace_period,
            reduction_factor=3,
        )
        asha = run_tune(data, k, asha_scheduler, None, storage)
        seq = run_tune(data, k, fifo(), 1, storage)
        plain = run_plain(data, k)
    ray.shutdown()
    result = {
        "machine": machine(), "cpus": cpus, "rows": args.rows, "trials": k,
        "max_rounds": args.max_rounds, "grace_period": args.grace_period, "full": full, "asha": asha,
        "tune_sequential": seq, "plain_sequential": plain,
        "asha_auc_gap": full["best_auc"] - asha["best_auc"],
        "asha_rounds_ratio": asha["rounds"] / full["rounds"],
        "asha_wall_ratio": asha["wall_s"] / full["wall_s"],
        "tune_overhead_ratio": seq["wall_s"] / plain["wall_s"],
        "tune_overhead_per_trial_s": (seq["wall_s"] - plain["wall_s"]) / k,
    }  # fmt: skip
    goal = result["asha_auc_gap"] <= 0.002 and result["asha_rounds_ratio"] <= 0.5
    md = f"""### Tuning: ASHA vs full random search, Tune vs back to back ({args.rows:,} rows, {k} trials, {args.max_rounds} rounds max, {cpus} CPUs)

| | best valid AUC | boosting rounds | wall s | vs baseline |
|---|---|---|---|---|
| (a) full random search (FIFO, baseline) | {full["best_auc"]:.4f} | {full["rounds"]:,} | {full["wall_s"]:.1f} | 1.00 |
| (b) ASHA (grace {args.grace_period}, reduction 3), same trials | {asha["best_auc"]:.4f} | {asha["rounds"]:,} | {asha["wall_s"]:.1f} | rounds {result["asha_rounds_ratio"]:.2f}, wall {result["asha_wall_ratio"]:.2f}, AUC gap {result["asha_auc_gap"]:+.4f} |
| (c) same trials back to back, no Tune (baseline) | {plain["best_auc"]:.4f} | {plain["rounds"]:,} | {plain["wall_s"]:.1f} | 1.00 |
| (c) Tune, one trial at a time | {seq["best_auc"]:.4f} | {seq["rounds"]:,} | {seq["wall_s"]:.1f} | {result["tune_overhead_ratio"]:.2f} ({result["tune_overhead_per_trial_s"]:.2f} s per trial) |

Goal (best AUC within 0.002 of the full search using <= 50% of its rounds): **{"met" if goal else "not met"}**. Machine: {result["machine"]}.
"""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
