"""`python -m jobs.learning_curve --config FILE`: how much does more data buy?

Trains the config's model on growing, nested fractions of the training split in parallel (one Ray
task per fraction and repeat), scores each on the same holdout, fits an inverse power law
metric(n) = a - b·n^(-c) to the points, and reports where doubling the data is predicted to add
less than `curve.min_gain` to the primary metric: past that size, more data stops paying. Writes a
plot and a JSON report under $SHIPYARD_HOME/learning_curves/ and logs both to MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import ray

from shipyard.config.base import parse_set
from shipyard.config.jobs import load_curve_config
from shipyard.contract import CURVE_RESULT_TAG, exit_on, result_line
from shipyard.errors import ConfigError, ShipyardError
from shipyard.registry import Registry, shipyard_home
from shipyard.training.curve import plot, run_curve


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.learning_curve", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--config", required=True, help="a training config, with a `curve` section or not"
    )
    ap.add_argument("--fractions", help="override curve.fractions: comma-separated, e.g. 0.1,0.5,1")
    ap.add_argument("--repeats", type=int, help="override curve.repeats (fits per fraction)")
    ap.add_argument("--min-gain", type=float, help="override curve.min_gain")
    ap.add_argument("--cpus-per-fit", type=float, help="override curve.cpus_per_fit")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key, e.g. --set curve.repeats=3 (repeatable)",
    )
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "local")
    return ap  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_set(args.set)
        if args.fractions is not None:
            try:
                overrides["curve.fractions"] = [float(x) for x in args.fractions.split(",")]
            except ValueError:
                raise ConfigError(
                    f"--fractions {args.fractions!r}: expected numbers like 0.1,0.5,1"
                ) from None
        for key, value in (("curve.repeats", args.repeats), ("curve.min_gain", args.min_gain),
                           ("curve.cpus_per_fit", args.cpus_per_fit)):  # fmt: skip
            if value is not None:
                overrides[key] = value
        job = load_curve_config(args.config, overrides)
    except ConfigError as err:
        return exit_on(err)
    cfg, curve = job.train_config(), job.curve
    ray.init(address=args.address, log_to_driver=True)
    try:
        report = run_curve(cfg, curve.fractions, curve.repeats, curve.min_gain, curve.cpus_per_fit)
    except ShipyardError as err:
        return exit_on(err)
    out = shipyard_home() / "learning_curves" / cfg.model.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "learning_curve.png")
    registry = Registry(cfg.tracking.tracking_uri)
    exp = registry.ensure_experiment(cfg.tracking.experiment or f"shipyard/{cfg.model.name}")
    run = registry.start_run(exp, f"{cfg.model.name}-learning-curve-{time.strftime('%Y%m%d-%H%M%S')}",
                             tags={"shipyard.kind": "learning_curve"})  # fmt: skip
    registry.log(run, metrics={"saturation_rows": report["curve"]["saturation_rows"],
                               "gain_if_doubled": report["curve"]["gain_if_doubled"]},
                 tags={"shipyard.verdict": report["verdict"]})  # fmt: skip
    registry.log_artifacts(run, out, "learning_curve")
    registry.end_run(run)
    print(report["verdict"])
    print(result_line({**report, "plot": str(out / "learning_curve.png"), "run_id": run},
                      CURVE_RESULT_TAG))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
