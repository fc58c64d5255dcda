"""`python -m jobs.learning_curve --config FILE`: how much does more data buy?

Trains the config's model on growing, nested fractions of the training split in parallel (one Ray
task per fraction and repeat), scores each on the same holdout, fits an inverse power law
metric(n) = a - b·n^(-c) to the points, and reports where doubling the data is predicted to add
less than `--min-gain` to the primary metric: past that size, more data stops paying. Writes a
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

from shipyard.config.jobs import load_tune_config
from shipyard.contract import CURVE_RESULT_TAG, EXIT_INVALID, exit_on, result_line
from shipyard.errors import ConfigError, ShipyardError
from shipyard.registry import Registry, shipyard_home
from shipyard.training.curve import plot, run_curve


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ap = argparse.ArgumentParser(
        prog="python -m jobs.learning_curve", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--config", required=True, help="a training config (jobs.train's)")
    ap.add_argument("--fractions", default="0.05,0.1,0.2,0.4,0.7,1.0",
                    help="fractions of the training split, comma-separated")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=2, help="fits per fraction (different samples)")
    ap.add_argument(
        "--min-gain", type=float, default=0.002, help="a doubling worth less stops paying"
    )
    ap.add_argument("--cpus-per-fit", type=float, default=1.0)
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "local")
    args = ap.parse_args(argv)
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ConfigError(f"--fractions {args.fractions!r}: each must be in (0, 1]")
        if args.repeats < 1 or args.min_gain <= 0:
            raise ConfigError("--repeats must be >= 1 and --min-gain > 0")
        cfg = load_tune_config(args.config).train_config()  # a `tune` section is ignored
    except ValueError:
        print(
            f"error: --fractions {args.fractions!r}: expected numbers like 0.1,0.5,1",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except ConfigError as err:
        return exit_on(err)
    ray.init(address=args.address, log_to_driver=True)
    try:
        report = run_curve(cfg, fractions, args.repeats, args.min_gain, args.cpus_per_fit)
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
