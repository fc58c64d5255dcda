"""`python -m jobs.train --config FILE`: data -> Ray Train XGBoost -> ONNX -> gates -> registry.

Exit codes: 0 a version was registered; 3 the candidate failed its gates (tracked, nothing
registered); 2 the config or the data is invalid; 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import xgboost as xgb
import yaml

import shipyard
from shipyard import evaluation as ev
from shipyard.artifacts import write_bundle
from shipyard.config import TrainJobConfig, load_train_config
from shipyard.errors import (
    ConfigError,
    DataValidationError,
    InvalidInput,
    ShipyardError,
)
from shipyard.events import EventLog
from shipyard.lineage import git_commit
from shipyard.onnx_model import (
    OnnxPredictor,
    build_onnx,
    native_predict,
    parity,
    single_row_latency,
)
from shipyard.profile import NumericCounts, quantile_edges, reference_profile
from shipyard.registry import CHALLENGER, CHAMPION, MODEL_DIR, Registry, shipyard_home
from shipyard.retrain import TRIGGER_ENV
from shipyard.schema import InputSchema

logger = logging.getLogger("jobs.train")

EXIT_GATES, EXIT_INVALID = 3, 2


@dataclasses.dataclass
class TrainReport:
    run_id: str
    registered_version: int | None
    aliases: list[str]
    gate_failures: list[str]
    evaluation: dict[str, Any]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


def _prediction_profile(schema: InputSchema, out: np.ndarray) -> dict[str, Any]:
    """Distribution of the model's holdout predictions, for output drift later."""
    values = out if out.ndim == 1 else out.max(axis=1)
    counts = NumericCounts.empty(quantile_edges(values))
    counts.update(values)
    d = counts.to_dict()
    d["what"] = {"binary": "P(positive)", "multiclass": "max class probability"}.get(
        schema.task, "predicted value"
    )
    return d


def _champion_metrics(
    registry: Registry, name: str, holdout: pd.DataFrame, y: np.ndarray, task: str
) -> dict[str, Any] | None:
    """Score the current champion on this run's holdout: same rows, fair comparison."""
    mv = registry.champion(name)
    if mv is None:
        return None
    with tempfile.TemporaryDirectory(prefix="shipyard-champion-") as tmp:
        bundle = registry.download(name, CHAMPION, Path(tmp))
        schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
        model_bytes = (bundle / "model.onnx").read_bytes()
    try:
        out = OnnxPredictor(model_bytes, schema).predict(holdout)
    except InvalidInput as err:
        return {"version": int(mv.version), "comparable": False, "reason": str(err)}
    return {"version": int(mv.version), "comparable": True, **ev.task_metrics(task, y, out)}


def run_training(cfg: TrainJobConfig, run_name: str | None = None) -> TrainReport:
    """The whole training path; also what tuning calls with its best trial's parameters."""

    home = shipyard_home()
    events = EventLog(home / "events.jsonl", cfg.events.webhook_url)
    registry = Registry(cfg.tracking.tracking_uri)
    name = cfg.model.name
    run_name = run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = registry.ensure_experiment(cfg.tracking.experiment or f"shipyard/{name}")
    git = git_commit()
    run_id = registry.start_run(
        experiment_id,
        run_name,
        tags={
            "shipyard.version": shipyard.__version__,
            "shipyard.model": name,
            "mlflow.source.git.commit": git["commit"],
            "shipyard.git.dirty": git["dirty"],
            "ray.version": ray.__version__,
        },
    )
    events.emit("run_started", model=name, run_id=run_id, run_name=run_name)
    registry.log(run_id, params=_flatten(cfg.model_dump(mode="json")))
    try:
        report = _train_and_register(cfg, registry, events, run_id, run_name, git, home)
    except BaseException as err:
        registry.log(run_id, tags={"shipyard.status": "failed", "shipyard.error": str(err)[:4000]})
        registry.end_run(run_id, "FAILED")
        events.emit("run_failed", model=name, run_id=run_id, error=str(err)[:2000])
        raise
    registry.end_run(run_id, "FINISHED")
    events.emit(
        "run_finished",
        model=name,
        run_id=run_id,
        registered_version=report.registered_version,
        gate_failures=report.gate_failures,
    )
    return report


def _train_and_register(
    cfg: TrainJobConfig,
    registry: Registry,
    events: EventLog,
    run_id: str,
    run_name: str,
    git: dict[str, str],
    home: Path,
) -> TrainReport:
    from jobs import data as data_mod
    from jobs import trainer

    name, task, gates = cfg.model.name, cfg.data.task, cfg.gates
    t0 = time.perf_counter()
    prep = data_mod.prepare(cfg.data)
    schema = prep.schema
    t_data = time.perf_counter() - t0
    registry.log(
        run_id,
        params={
            "data.sha256": prep.fingerprint["sha256"],
            "data.files": len(prep.fingerprint["files"]),
            "features.numeric": ",".join(f.name for f in schema.features if f.kind == "numeric"),
            "features.categorical": ",".join(
                f.name for f in schema.features if f.kind == "categorical"
            ),
            "features.dropped": ",".join(schema.dropped),
        },
        metrics={f"rows_{k}": v for k, v in prep.rows.items()},
        tags={"shipyard.data.fingerprint": prep.fingerprint["sha256"]},
    )
    holdout = prep.holdout
    y = schema.encode_target(holdout[cfg.data.target])

    baseline_model = trainer.fit_baseline(prep.sample, schema, cfg.data.seed)
    baseline = ev.task_metrics(task, y, trainer.baseline_predict(baseline_model, holdout, schema))

    t1 = time.perf_counter()
    storage = cfg.train.storage_path or str(home / "checkpoints")
    outcome = trainer.train_xgboost(prep.train, prep.valid, schema, cfg.train, storage, run_name)
    t_train = time.perf_counter() - t1
    booster = outcome.booster

    out = native_predict(booster, schema, holdout)
    metrics = ev.task_metrics(task, y, out)
    primary, _ = ev.PRIMARY[task]
    cat_cols = [f.name for f in schema.features if f.kind == "categorical"]
    slices = ev.slice_metrics(task, holdout, y, out, cat_cols, gates.min_slice_rows)
    worst = ev.worst_slice(task, slices, metrics[primary])

    onnx_bytes = build_onnx(booster, schema).SerializeToString()
    predictor = OnnxPredictor(onnx_bytes, schema)
    parity_report = parity(predictor, booster, holdout, gates.parity_tolerance)  # raises if off
    latency = single_row_latency(predictor, holdout)
    champion = _champion_metrics(registry, name, holdout, y, task)
    comparable_champion = champion if champion and champion.get("comparable") else None

    reasons = ev.check_gates(
        task, gates, metrics, baseline, comparable_champion, worst, latency["p50_ms"]
    )
    evaluation = {
        "task": task,
        "primary_metric": primary,
        "holdout_rows": len(holdout),
        "metrics": metrics,
        "baseline": {"model": "logistic/ridge regression", **baseline},
        "lift_over_baseline": ev.lift(task, metrics[primary], baseline[primary]),
        "champion": champion,
        "lift_over_champion": (
            ev.lift(task, metrics[primary], comparable_champion[primary])
            if comparable_champion
            else None
        ),
        "slices": slices,
        "worst_slice": worst,
        "onnx": {"parity": parity_report, "latency": latency},
        "training": {
            "rounds": outcome.rounds,
            "best_iteration": outcome.best_iteration,
            "valid_loss": outcome.valid_loss,
            "resumed_from_round": outcome.resumed_from,
            "num_workers": cfg.train.num_workers,
            "use_gpu": cfg.train.use_gpu,
            "checkpoint": outcome.checkpoint_path,
            "seconds_data": t_data,
            "seconds_train": t_train,
        },
        "gates": {"passed": not reasons, "failures": reasons, **gates.model_dump()},
        "rows": prep.rows,
        "notes": prep.notes,
    }
    lineage = {
        "run_id": run_id,
        "run_name": run_name,
        "tracking_uri": registry.tracking_uri,
        "git": git,
        "data": {"path": cfg.data.path, **prep.fingerprint},
        "champion_at_training": champion["version"] if champion else None,
        "trigger": _trigger(),
        "config": cfg.model_dump(mode="json"),
        "versions": {
            "shipyard": shipyard.__version__,
            "xgboost": xgb.__version__,
            "ray": ray.__version__,
        },
    }
    profile = reference_profile(prep.profile, schema, _prediction_profile(schema, out))
    files = {
        "model.onnx": onnx_bytes,
        "booster.ubj": bytes(booster.save_raw("ubj")),
        "input_schema.json": schema.to_json().encode(),
        "reference_profile.json": json.dumps(profile, indent=1).encode(),
        "evaluation.json": json.dumps(evaluation, indent=1, default=float).encode(),
        "lineage.json": json.dumps(lineage, indent=1).encode(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sums = write_bundle(Path(tmp) / MODEL_DIR, files)
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        registry.log_artifacts(run_id, Path(tmp))

    registry.log(
        run_id,
        metrics={
            **metrics,
            **{f"baseline_{k}": v for k, v in baseline.items()},
            **(
                {f"champion_{k}": v for k, v in comparable_champion.items() if k in metrics}
                if comparable_champion
                else {}
            ),
            "worst_slice_gap": worst["gap"] if worst else None,  # type: ignore[dict-item]
            "onnx_p50_ms": latency["p50_ms"],
            "onnx_p99_ms": latency["p99_ms"],
            "onnx_parity_max_abs_diff": parity_report["max_abs_diff"],
            "rounds": outcome.rounds,
            "best_iteration": outcome.best_iteration,
            "seconds_train": t_train,
        },
    )

    if reasons:
        registry.log(
            run_id, tags={"shipyard.status": "gates_failed", "shipyard.gates": "; ".join(reasons)}
        )
        events.emit("gate_failed", model=name, run_id=run_id, reasons=reasons)
        return TrainReport(run_id, None, [], reasons, evaluation)

    version = registry.register(
        name,
        run_id,
        tags={
            "data_fingerprint": prep.fingerprint["sha256"],
            "git_commit": git["commit"],
            primary: f"{metrics[primary]:.6f}",
            "baseline_" + primary: f"{baseline[primary]:.6f}",
            "sha256_model.onnx": sums["model.onnx"],
        },
        description=cfg.model.description,
    )
    aliases = [CHALLENGER]
    registry.set_alias(name, CHALLENGER, version)
    if CHAMPION not in registry.aliases(name):
        registry.set_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    registry.log(run_id, tags={"shipyard.status": "registered", "shipyard.version": str(version)})
    events.emit(
        "version_registered",
        model=name,
        version=version,
        run_id=run_id,
        aliases=aliases,
        **{primary: metrics[primary]},
    )
    return TrainReport(run_id, version, aliases, [], evaluation)


def _trigger() -> dict[str, Any]:
    """Why this run exists: a drift retraining request (set by the serving app) or a person."""
    raw = os.environ.get(TRIGGER_ENV)
    if not raw:
        return {"kind": "manual"}
    try:
        out: dict[str, Any] = json.loads(raw)
        return out
    except ValueError:
        return {"kind": "unparsable", "raw": raw[:500]}


def exit_on(err: ShipyardError) -> int:
    """Print a job's error and return its exit code: 2 for invalid config or data, else 1.
    Shared by every job's CLI (train, tune, learning curve)."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_INVALID if isinstance(err, ConfigError | DataValidationError) else 1


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.num_workers=2")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", required=True, help="YAML job config (see README: config reference)"
    )
    ap.add_argument("--data", help="override data.path")
    ap.add_argument("--model-name", help="override model.name")
    ap.add_argument("--num-workers", type=int, help="override train.num_workers")
    ap.add_argument("--use-gpu", action="store_true", default=None, help="override train.use_gpu")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key, e.g. --set gates.max_slice_gap=0.1 (repeatable)",
    )
    ap.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or "local",
        help="Ray cluster to use; default: the job's cluster, else a new local one",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        overrides = _parse_set(args.set)
        for key, value in (
            ("data.path", args.data),
            ("model.name", args.model_name),
            ("train.num_workers", args.num_workers),
            ("train.use_gpu", args.use_gpu),
        ):
            if value is not None:
                overrides[key] = value
        cfg = load_train_config(args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID

    ray.init(address=args.address, log_to_driver=True)
    try:
        report = run_training(cfg)
    except ShipyardError as err:
        return exit_on(err)
    summary = {
        "run_id": report.run_id,
        "model": cfg.model.name,
        "registered_version": report.registered_version,
        "aliases": report.aliases,
        "gate_failures": report.gate_failures,
        "metrics": report.evaluation["metrics"],
        "baseline": report.evaluation["baseline"],
        "onnx_latency": report.evaluation["onnx"]["latency"],
        "training": {
            k: report.evaluation["training"][k]
            for k in ("rounds", "best_iteration", "resumed_from_round", "checkpoint")
        },
    }
    print("SHIPYARD_RESULT " + json.dumps(summary, default=float))
    if report.gate_failures:
        for r in report.gate_failures:
            print(f"gate failed: {r}", file=sys.stderr)
        return EXIT_GATES
    return 0


if __name__ == "__main__":
    sys.exit(main())
