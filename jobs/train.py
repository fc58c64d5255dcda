"""`python -m jobs.train --config FILE`: data -> Ray Train XGBoost -> ONNX -> gates -> registry.

Exit codes (`shipyard.contract`): 0 a version was registered; 3 the candidate failed its gates
(tracked, nothing registered); 2 the config or the data is invalid; 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shipyard.config.base import parse_set
from shipyard.config.jobs import load_train_config
from shipyard.contract import EXIT_GATES, EXIT_OK, exit_on, result_line
from shipyard.errors import ShipyardError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", required=True, help="YAML job config (see docs/training.md: config reference)"
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
        overrides = parse_set(args.set)
        for key, value in (
            ("data.path", args.data),
            ("model.name", args.model_name),
            ("train.num_workers", args.num_workers),
            ("train.use_gpu", args.use_gpu),
        ):
            if value is not None:
                overrides[key] = value
        cfg = load_train_config(args.config, overrides)
    except ShipyardError as err:
        return exit_on(err)

    # Imported once the config is valid: a bad config is refused in a fraction of a second, not
    # after the seconds it takes to import Ray, XGBoost, scikit-learn and MLflow.
    import ray

    from shipyard.training.pipeline import run_training
    from shipyard.training.verdicts import verdict_lines

    ray.init(address=args.address, log_to_driver=True)
    try:
        report = run_training(cfg)
    except ShipyardError as err:
        return exit_on(err)
    for line in verdict_lines(report.evaluation):
        print(line)
    print(result_line(report.summary(cfg.model.name)))
    for reason in report.gate_failures:
        print(f"gate failed: {reason}", file=sys.stderr)
    return EXIT_GATES if report.gate_failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
