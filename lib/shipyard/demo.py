"""`make demo`: a local Ray cluster, the default dataset, the training job through `ray job submit`,
and a summary of the version it registered."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from shipyard import datagen
from shipyard.lineage import git_env
from shipyard.localray import LocalCluster, ray_env
from shipyard.registry import HOME_ENV, Registry, resolve_tracking_uri
from shipyard.submit import submit_command

CONFIG = "jobs/configs/demo.yaml"


def summarize(registry: Registry, name: str, version: int) -> str:
    """A few lines a person can read: metrics against baseline, slices, latency, where to look."""
    with tempfile.TemporaryDirectory(prefix="shipyard-summary-") as tmp:
        bundle = registry.download(name, version, Path(tmp))  # verifies the checksums
        ev = json.loads((bundle / "evaluation.json").read_text())
        files = sorted(f.name for f in bundle.iterdir())
    p = ev["primary_metric"]
    m, b = ev["metrics"], ev["baseline"]
    aliases = sorted(a for a, v in registry.aliases(name).items() if v == version)
    lat, par = ev["onnx"]["latency"], ev["onnx"]["parity"]
    lines = [
        f"Registered {name} version {version} (aliases: {', '.join(aliases) or 'none'})",
        f"  holdout {p}: {m[p]:.4f}  baseline: {b[p]:.4f}  lift: {ev['lift_over_baseline']:+.4f}"
        f"  ({ev['holdout_rows']} rows)",
        "  " + "  ".join(f"{k}: {v:.4f}" for k, v in m.items() if k != p),
    ]
    if ev.get("champion") and ev["champion"].get("comparable"):
        lines.append(
            f"  champion v{ev['champion']['version']} on the same holdout: "
            f"{ev['champion'][p]:.4f} (lift {ev['lift_over_champion']:+.4f})"
        )
    w = ev.get("worst_slice")
    if w:
        lines.append(
            f"  worst slice: {w['feature']}={w['value']} {p} {w[p]:.4f} (gap {w['gap']:.4f}, {w['rows']} rows)"
        )
    lines += [
        f"  ONNX single-row p50 {lat['p50_ms'] * 1000:.0f} µs, p99 {lat['p99_ms'] * 1000:.0f} µs"
        f" (budget {ev['gates']['latency_budget_ms']} ms); parity max |Δ| {par['max_abs_diff']:.2g}",
        f"  trained {ev['training']['best_iteration'] + 1} rounds on {ev['training']['num_workers']} "
        f"Ray Train workers in {ev['training']['seconds_train']:.1f}s",
        f"  artifacts: {', '.join(files)}",
        f"  MLflow UI: make mlflow-ui, then http://127.0.0.1:5000 (experiment shipyard/{name},"
        f" model {name})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", default="state", help="state directory (SHIPYARD_HOME)")
    ap.add_argument("--rows", type=int, default=50_000, help="rows of demo data to generate")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = ap.parse_args(argv)

    home = Path(args.state).absolute()
    os.environ[HOME_ENV] = str(home)
    data_dir = home / "data" / "demo"
    meta = {"generator_version": datagen.GENERATOR_VERSION, "rows": args.rows, "seed": 0}
    meta_file = data_dir / "_generator.json"
    if not meta_file.exists() or json.loads(meta_file.read_text()) != meta:
        for old in data_dir.glob("part-*"):
            old.unlink()
        datagen.write_dataset(data_dir, args.rows, seed=0)
        meta_file.write_text(json.dumps(meta))
        print(f"generated {args.rows} rows of demo data under {data_dir}")
    tracking_uri = resolve_tracking_uri()
    registry = Registry(tracking_uri)
    name = "churn"
    before = {int(v.version) for v in registry.versions(name)}

    print(f"starting a local Ray cluster ({args.num_cpus} CPUs) ...", flush=True)
    with LocalCluster(num_cpus=args.num_cpus, log_path=home / "logs" / "ray-start.log") as cluster:
        print(f"Ray dashboard and job API at {cluster.address}", flush=True)
        cmd = submit_command(
            cluster.address,
            [
                "python",
                "-m",
                "jobs.train",
                "--config",
                CONFIG,
                "--data",
                str(data_dir / "*.parquet"),
            ],
            env_vars={
                HOME_ENV: str(home),
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                **git_env(),
            },
            submission_id=f"shipyard-demo-{uuid.uuid4().hex[:8]}",
        )
        print("$ ray job submit ... -- " + " ".join(cmd[cmd.index("--") + 1 :]), flush=True)
        rc = subprocess.run(cmd, env=ray_env()).returncode
    after = {int(v.version) for v in registry.versions(name)} - before
    if rc != 0 or not after:
        print(
            f"\nthe training job did not register a version (exit code {rc}); see its log above",
            file=sys.stderr,
        )
        return rc or 1
    print("\n" + summarize(registry, name, max(after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
