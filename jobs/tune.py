"""`python -m jobs.tune --config FILE`: Ray Tune over XGBoost parameters, then the best one trained
and registered through `jobs.train` (same gates, same registry path; no copied code).

Each trial boosts in its own Tune actor with `tune.cpus_per_trial`, reports the validation metric
every `report_every` rounds and checkpoints every `checkpoint_every`; ASHA stops poor trials at its
rungs. A trial that loses its node is retried from its last checkpoint (`tune.max_failures`); a
driver that dies is picked up with `--resume` from the experiment checkpoint. The study is an
MLflow run; every trial is a child run of it.

Exit codes: 0 done (and, with `tune.train_best`, registered); 3 the best candidate failed its
gates; 2 invalid config or data; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray

from shipyard.config.base import parse_set
from shipyard.config.jobs import load_tune_config
from shipyard.contract import EXIT_GATES, TUNE_RESULT_TAG, exit_on, result_line
from shipyard.errors import ConfigError, ShipyardError
from shipyard.registry import Registry
from shipyard.training.pipeline import run_training
from shipyard.training.tuning import (
    TUNE_METRIC,
    booster_ready,
    load_arrays,
    log_trials,
    prune_checkpoints,
    run_study,
    study_dir,
    summarize,
)

logger = logging.getLogger("jobs.tune")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ap = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="training config plus a `tune` section")
    ap.add_argument("--resume", action="store_true", help="resume the study after a driver loss")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "local")
    args = ap.parse_args(argv)
    try:
        cfg = load_tune_config(args.config, parse_set(args.set))
    except ConfigError as err:
        return exit_on(err)
    ray.init(address=args.address, log_to_driver=True)
    metric, mode, _ = TUNE_METRIC[cfg.data.task]
    registry = Registry(cfg.tracking.tracking_uri)
    experiment_id = registry.ensure_experiment(
        cfg.tracking.experiment or f"shipyard/{cfg.model.name}"
    )
    storage, name = study_dir(cfg)
    marker = Path(storage) / name / "shipyard_study.json" if "://" not in storage else None
    try:
        arrays, prep = load_arrays(cfg)
        study_run = None
        if args.resume and marker and marker.exists():
            study_run = json.loads(marker.read_text())["run_id"]
        if study_run is None:
            study_run = registry.start_run(
                experiment_id,
                f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={"shipyard.kind": "study", "shipyard.model": cfg.model.name},
            )
            registry.log(
                study_run,
                params={f"tune.{k}": v for k, v in cfg.tune.model_dump(mode="json").items()},
            )
        if marker:  # so that `--resume` after a driver loss continues the same MLflow study
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"run_id": study_run}))
        t0 = time.perf_counter()
        grid = run_study(cfg, arrays, len(prep.schema.classes), resume=args.resume)
        summary = summarize(grid, metric, mode)
        logger.info(
            "study finished; deleted %d superseded trial checkpoints", prune_checkpoints(grid)
        )
        log_trials(registry, experiment_id, study_run, summary, metric)
        best = summary["best"]
        if best is None:
            registry.end_run(study_run, "FAILED")
            print("error: no trial finished; see the Tune log above", file=sys.stderr)
            return 1
        registry.log(
            study_run,
            params={f"best.{k}": v for k, v in best["config"].items()},
            metrics={
                f"best_{metric.replace('-', '_')}": best["metric"],
                "trials": len(summary["trials"]),
                "trial_errors": summary["errors"],
                "rounds_total": summary["rounds_total"],
                "seconds": time.perf_counter() - t0,
            },
        )
        result: dict[str, Any] = {
            "study_run_id": study_run, "trials": len(summary["trials"]), "errors": summary["errors"],
            "best": best, "rounds_total": summary["rounds_total"], "registered_version": None,
            "trial_summaries": [
                {k: x[k] for k in ("trial_id", "rounds", "resumed_from", "metric", "error")}
                for x in summary["trials"]
            ],
        }  # fmt: skip
        code = 0
        if cfg.tune.train_best:
            params = booster_ready(best["config"])
            report = run_training(cfg.train_config(params), run_name=f"{name}-best")
            registry.log(study_run, tags={"shipyard.best_run_id": report.run_id})
            result["registered_version"] = report.registered_version
            result["gate_failures"] = report.gate_failures
            code = EXIT_GATES if report.gate_failures else 0
        registry.end_run(study_run, "FINISHED")
    except ShipyardError as err:
        return exit_on(err)
    print(result_line(result, TUNE_RESULT_TAG))
    return code


if __name__ == "__main__":
    sys.exit(main())
