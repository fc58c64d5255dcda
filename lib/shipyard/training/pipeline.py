"""The training path from data to registry: what `jobs.train` runs, and what tuning reuses to
train and register its best trial (same gates, same registry path).

Each step is a function of its own: prepare the data, fit the baseline and the candidate,
evaluate and gate it, build its bundle, register it. The run is tracked in MLflow throughout,
and a failure at any step marks the run failed and registers nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from shipyard import contract
from shipyard.bundle.files import write_bundle
from shipyard.bundle.graph import (
    OnnxPredictor,
    build_onnx,
    native_predict,
    parity,
    single_row_latency,
)
from shipyard.bundle.lineage import git_commit, run_code
from shipyard.bundle.mlflow_model import example_of, mlflow_files
from shipyard.bundle.profile import NumericCounts, quantile_edges, reference_profile
from shipyard.bundle.schema import InputSchema
from shipyard.config.jobs import TrainJobConfig
from shipyard.errors import InvalidInput
from shipyard.events import EventLog
from shipyard.registry import CHALLENGER, CHAMPION, MODEL_DIR, Registry, shipyard_home
from shipyard.training import data as data_mod
from shipyard.training import evaluation as ev
from shipyard.training import fairness, fit
from shipyard.training import slices as sl
from shipyard.training.summary import TrainReport, target_summary

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Candidate:
    """A fitted model and everything measured about it on the holdout."""

    booster: xgb.Booster
    onnx: bytes
    holdout_out: np.ndarray  # the booster's holdout predictions
    evaluation: dict[str, Any]
    champion: dict[str, Any] | None

    @property
    def gate_failures(self) -> list[str]:
        failures: list[str] = self.evaluation["gates"]["failures"]
        return failures


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted MLflow params (lists and mappings as JSON)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


def run_training(cfg: TrainJobConfig, run_name: str | None = None) -> TrainReport:
    """The whole training path as one tracked MLflow run."""
    home = shipyard_home()
    events = EventLog(home / "events.jsonl", cfg.events.webhook_url)
    events.resend_undelivered()  # what a job or app that died had not posted to the webhook
    registry = Registry(cfg.tracking.tracking_uri)
    name = cfg.model.name
    run_name = run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = registry.ensure_experiment(cfg.tracking.experiment or f"shipyard/{name}")
    git, code = git_commit(), run_code()
    source = {"git": git, "code": code}  # where the run's code came from, and what it was
    run_id = registry.start_run(
        experiment_id,
        run_name,
        tags={
            "shipyard.version": shipyard.__version__,
            "shipyard.model": name,
            "mlflow.source.git.commit": git["commit"],
            "shipyard.git.dirty": git["dirty"],
            "shipyard.code.sha256": str(code["sha256"]),
            "ray.version": ray.__version__,
        },
    )
    events.emit("run_started", model=name, run_id=run_id, run_name=run_name)
    registry.log(run_id, params=flatten(cfg.model_dump(mode="json")))
    try:
        report = train_and_register(cfg, registry, events, run_id, run_name, source, home)
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


def train_and_register(
    cfg: TrainJobConfig,
    registry: Registry,
    events: EventLog,
    run_id: str,
    run_name: str,
    source: dict[str, Any],
    home: Path,
) -> TrainReport:
    t0 = time.perf_counter()
    prep = data_mod.prepare(cfg.data, carry=evaluation_columns(cfg))
    seconds_data = time.perf_counter() - t0
    log_data(registry, run_id, prep)
    t1 = time.perf_counter()
    storage = cfg.train.storage_path or str(home / "checkpoints")
    outcome = fit.train_xgboost(
        prep.train, prep.valid, prep.schema, cfg.train, storage, run_name, cfg.data.seed
    )
    seconds_train = time.perf_counter() - t1
    candidate = evaluate_candidate(cfg, prep, outcome, registry)
    candidate.evaluation["training"].update(seconds_data=seconds_data, seconds_train=seconds_train)
    files = bundle_files(cfg, prep, candidate, lineage(cfg, prep, candidate, registry, run_id,
                                                       run_name, source))  # fmt: skip
    sums = log_candidate(registry, run_id, cfg, files, candidate)
    name, failures = cfg.model.name, candidate.gate_failures
    if failures:
        registry.log(
            run_id, tags={"shipyard.status": "gates_failed", "shipyard.gates": "; ".join(failures)}
        )
        events.emit("gate_failed", model=name, run_id=run_id, reasons=failures)
        return TrainReport(run_id, None, [], failures, candidate.evaluation)
    version, aliases = register(registry, cfg, run_id, prep, candidate, sums, source)
    primary = candidate.evaluation["primary_metric"]
    events.emit(
        "version_registered",
        model=name,
        version=version,
        run_id=run_id,
        aliases=aliases,
        **{primary: candidate.evaluation["metrics"][primary]},
    )
    return TrainReport(run_id, version, aliases, [], candidate.evaluation)


def log_data(registry: Registry, run_id: str, prep: data_mod.Prepared) -> None:
    schema = prep.schema
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


def champion_metrics(
    registry: Registry,
    name: str,
    holdout: pd.DataFrame,
    y: np.ndarray,
    task: str,
    classes: tuple[Any, ...] = (),
) -> dict[str, Any] | None:
    """Score the current champion on this run's holdout: same rows, fair comparison. `y` is
    encoded in `classes`' order; a champion that orders its classes otherwise (trained before
    `data.positive_class`) is scored against the holdout encoded its own way."""
    mv = registry.champion(name)
    if mv is None:
        return None
    with tempfile.TemporaryDirectory(prefix="shipyard-champion-") as tmp:
        bundle = registry.download(name, CHAMPION, Path(tmp))
        schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
        model_bytes = (bundle / "model.onnx").read_bytes()
    try:
        out = OnnxPredictor(model_bytes, schema).predict(holdout)
        if list(schema.classes) != list(classes):  # scored in the champion's own class order
            y = schema.encode_target(holdout[schema.target])
    except InvalidInput as err:
        return {"version": int(mv.version), "comparable": False, "reason": str(err)}
    return {"version": int(mv.version), "comparable": True, **ev.task_metrics(task, y, out)}


def evaluate_candidate(
    cfg: TrainJobConfig, prep: data_mod.Prepared, outcome: fit.TrainOutcome, registry: Registry
) -> Candidate:
    """Holdout metrics against the baseline and the champion, slices, ONNX parity and latency,
    and the gates' verdict."""
    schema, holdout, task, gates = prep.schema, prep.holdout, cfg.data.task, cfg.gates
    y = schema.encode_target(holdout[cfg.data.target])
    baseline_model = fit.fit_baseline(prep.sample, schema, cfg.data.seed)
    baseline = ev.task_metrics(task, y, fit.baseline_predict(baseline_model, holdout, schema))
    booster = outcome.booster
    out = native_predict(booster, schema, holdout)
    metrics = ev.task_metrics(task, y, out)
    primary, _ = ev.PRIMARY[task]
    slices = slice_report(cfg, schema, holdout, y, out)
    fair = fairness_report(cfg, holdout, y, out)
    onnx_bytes = build_onnx(booster, schema).SerializeToString()
    predictor = OnnxPredictor(onnx_bytes, schema)
    parity_report = parity(predictor, booster, holdout, gates.parity_tolerance)  # raises if off
    latency = single_row_latency(predictor, holdout)
    champion = champion_metrics(registry, cfg.model.name, holdout, y, task, schema.classes)
    comparable = champion if champion and champion.get("comparable") else None
    verdicts = [*sl.failures(slices), *(fair["failures"] if fair else [])]
    positive = schema.classes[1] if task == "binary" else None
    broken = sl.broken(task, y, out, positive)
    failures = ev.check_gates(
        task, gates, metrics, baseline, comparable, latency["p50_ms"], verdicts, broken
    )
    evaluation = {
        "task": task,
        "target": target_summary(schema),
        "primary_metric": primary,
        "holdout_rows": len(holdout),
        "metrics": metrics,
        "baseline": {"model": "logistic/ridge regression", **baseline},
        "broken": broken,
        "lift_over_baseline": ev.lift(task, metrics[primary], baseline[primary]),
        "champion": champion,
        "lift_over_champion": (
            ev.lift(task, metrics[primary], comparable[primary]) if comparable else None
        ),
        "slices": slices,
        "fairness": fair,
        "onnx": {"parity": parity_report, "latency": latency},
        "training": {
            "rounds": outcome.rounds,
            "best_iteration": outcome.best_iteration,
            "valid_metric": outcome.valid_metric,
            "valid_metric_name": fit.eval_metric(task),
            "resumed_from_round": outcome.resumed_from,
            "num_workers": cfg.train.num_workers,
            "use_gpu": cfg.train.use_gpu,
            "checkpoint": outcome.checkpoint_path,
        },
        "gates": {"passed": not failures, "failures": failures, **gates.model_dump()},
        "rows": prep.rows,
        "notes": prep.notes,
    }
    return Candidate(booster, onnx_bytes, out, evaluation, champion)


def evaluation_columns(cfg: TrainJobConfig) -> list[str]:
    """Columns the evaluation needs beside the features: sensitive groups and slice columns
    (carried through the split; those in data.drop never reach the model)."""
    wanted = [*cfg.fairness.sensitive, *(cfg.gates.slice_columns or [])]
    return list(dict.fromkeys(c for c in wanted if c != cfg.data.target))


def slice_report(
    cfg: TrainJobConfig, schema: InputSchema, holdout: pd.DataFrame, y: np.ndarray, out: np.ndarray
) -> dict[str, Any]:
    gates = cfg.gates
    kinds = {f.name: f.kind for f in schema.features}
    columns = gates.slice_columns
    if columns is None:
        columns = [*kinds, *(c for c in cfg.fairness.sensitive if c not in kinds)]
    sensitive = set(cfg.fairness.sensitive)

    def numeric(c: str) -> bool:
        if c in kinds:
            return kinds[c] == "numeric"
        return c not in sensitive and pd.api.types.is_numeric_dtype(holdout[c])

    return sl.slice_report(
        cfg.data.task, holdout, y, out,
        categorical=[c for c in columns if not numeric(c)],
        numeric=[c for c in columns if numeric(c)],
        max_gap=gates.max_slice_gap, alpha=gates.slice_alpha, correction=gates.slice_correction,
        min_rows=gates.min_slice_rows, bins=gates.slice_bins,
    )  # fmt: skip


def fairness_report(
    cfg: TrainJobConfig, holdout: pd.DataFrame, y: np.ndarray, out: np.ndarray
) -> dict[str, Any] | None:
    f = cfg.fairness
    if not f.sensitive:
        return None
    return fairness.fairness_report(
        holdout, y, out,
        sensitive=f.sensitive, threshold=f.threshold, min_rows=f.min_group_rows,
        bounds={k: getattr(f, k) for k in fairness.GAPS.values()},
        alpha=f.alpha, correction=cfg.gates.slice_correction,
    )  # fmt: skip


def prediction_profile(schema: InputSchema, out: np.ndarray) -> dict[str, Any]:
    """Distribution of the model's holdout predictions, for output drift later."""
    values = out if out.ndim == 1 else out.max(axis=1)
    counts = NumericCounts.empty(quantile_edges(values))
    counts.update(values)
    d = counts.to_dict()
    d["what"] = {"binary": "P(positive)", "multiclass": "max class probability"}.get(
        schema.task, "predicted value"
    )
    return d


def lineage(
    cfg: TrainJobConfig,
    prep: data_mod.Prepared,
    candidate: Candidate,
    registry: Registry,
    run_id: str,
    run_name: str,
    source: dict[str, Any],
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "run_name": run_name,
        "tracking_uri": registry.tracking_uri,
        "git": source["git"],
        "code": source["code"],  # a hash of the code that ran: known without git
        "data": {"path": cfg.data.path, **prep.fingerprint},
        "champion_at_training": candidate.champion["version"] if candidate.champion else None,
        "trigger": contract.trigger(),
        "config": cfg.model_dump(mode="json"),
        "versions": {
            "shipyard": shipyard.__version__,
            "xgboost": xgb.__version__,
            "ray": ray.__version__,
        },
    }


def bundle_files(
    cfg: TrainJobConfig,
    prep: data_mod.Prepared,
    candidate: Candidate,
    lineage: dict[str, Any],
) -> dict[str, bytes]:
    """The version's files (see `shipyard.bundle.files.REQUIRED`): none executes code on load."""
    schema = prep.schema
    profile = reference_profile(
        prep.profile, schema, prediction_profile(schema, candidate.holdout_out)
    )
    return {
        "model.onnx": candidate.onnx,
        "booster.ubj": bytes(candidate.booster.save_raw("ubj")),
        "input_schema.json": schema.to_json().encode(),
        "reference_profile.json": json.dumps(profile, indent=1).encode(),
        "evaluation.json": json.dumps(candidate.evaluation, indent=1, default=float).encode(),
        "lineage.json": json.dumps(lineage, indent=1).encode(),
        # The same version as an MLflow model (pyfunc from code, over the files above).
        **mlflow_files(schema, example_of(schema, prep.holdout)),
    }


def log_candidate(
    registry: Registry,
    run_id: str,
    cfg: TrainJobConfig,
    files: dict[str, bytes],
    candidate: Candidate,
) -> dict[str, str]:
    """The bundle as the run's artifacts and its figures as the run's metrics; returns the
    bundle's checksums."""
    with tempfile.TemporaryDirectory() as tmp:
        sums = write_bundle(Path(tmp) / MODEL_DIR, files)
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        registry.log_artifacts(run_id, Path(tmp))
    e = candidate.evaluation
    metrics, baseline, slices = e["metrics"], e["baseline"], e["slices"]
    worst = slices["slices"][0] if slices["slices"] else None
    champion = e["champion"] if e["champion"] and e["champion"].get("comparable") else {}
    latency, training = e["onnx"]["latency"], e["training"]
    registry.log(
        run_id,
        metrics={
            **metrics,
            **{f"baseline_{k}": v for k, v in baseline.items() if k != "model"},
            **{f"champion_{k}": v for k, v in champion.items() if k in metrics},
            "worst_slice_gap": worst["gap"] if worst else None,
            "slices_tested": slices["tested"],
            "slices_failed": slices["failed"],
            **fairness_metrics(e["fairness"]),
            "onnx_p50_ms": latency["p50_ms"],
            "onnx_p99_ms": latency["p99_ms"],
            "onnx_parity_max_abs_diff": e["onnx"]["parity"]["max_abs_diff"],
            "rounds": training["rounds"],
            "best_iteration": training["best_iteration"],
            "seconds_train": training["seconds_train"],
        },
    )
    return sums


def fairness_metrics(report: dict[str, Any] | None) -> dict[str, float]:
    """`fairness.<column>.<gap>` and its interval, as MLflow metrics (a gap that is not
    estimable has no number: its reason is in evaluation.json)."""
    out: dict[str, float] = {}
    for col in (report or {}).get("columns", []):
        for name, gap in col["gaps"].items():
            if gap["value"] is None:
                continue
            key = f"fairness.{col['column']}.{name}"
            out[key] = gap["value"]
            out[key + ".ci_low"], out[key + ".ci_high"] = gap["ci95"]
    return out


def register(
    registry: Registry,
    cfg: TrainJobConfig,
    run_id: str,
    prep: data_mod.Prepared,
    candidate: Candidate,
    sums: dict[str, str],
    source: dict[str, Any],
) -> tuple[int, list[str]]:
    """Register the run's bundle as a new version: challenger, and champion if there is none."""
    name, e = cfg.model.name, candidate.evaluation
    primary = e["primary_metric"]
    version = registry.register(
        name,
        run_id,
        tags={
            "data_fingerprint": prep.fingerprint["sha256"],
            "git_commit": source["git"]["commit"],
            "code_sha256": source["code"]["sha256"],
            primary: f"{e['metrics'][primary]:.6f}",
            "baseline_" + primary: f"{e['baseline'][primary]:.6f}",
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
    return version, aliases
