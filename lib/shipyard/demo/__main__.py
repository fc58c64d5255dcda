"""`make demo`: a local Ray cluster, the default dataset, the training job through `ray job submit`,
a summary of the version it registered, then champion and challenger served 90/10 with
`serve deploy`, keyed traffic with simulated outcomes, and the A/B report."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from shipyard.bundle.lineage import git_env
from shipyard.compute.ingress import direct_urls, serve_details
from shipyard.compute.localray import LocalCluster, ray_env
from shipyard.compute.submit import submit_command
from shipyard.contract import HOME_ENV
from shipyard.demo import datagen
from shipyard.events import EventLog
from shipyard.registry import Registry, resolve_tracking_uri
from shipyard.training.verdicts import verdict_lines

CONFIG = "jobs/configs/demo.yaml"
SERVE_CONFIG = "serving/config.yaml"
# A second candidate when the registry has only one version: shallower trees, fewer rounds.
CHALLENGER_OVERRIDES = ["train.params.max_depth=4", "train.num_boost_round=150"]


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
    lines += [f"  {line}" for line in verdict_lines(ev)]
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


def train(
    cluster: LocalCluster, home: Path, data_dir: Path, tracking_uri: str, extra: list[str]
) -> int:
    """Submit the training job with `ray job submit`; returns its exit code."""
    sets = [a for kv in extra for a in ("--set", kv)]
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
            *sets,
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
    return subprocess.run(cmd, env=ray_env()).returncode


def deploy(
    cluster: LocalCluster, home: Path, port: int, weights: dict[str, float] | None = None
) -> str:
    """`serve deploy` serving/config.yaml (on a free local port); wait until it answers.

    With `weights`, only the router's user_config changes: Serve reconfigures it in place.
    """
    cfg = yaml.safe_load(Path(SERVE_CONFIG).read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    if weights:
        router = next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "router")
        router["user_config"]["weights"] = weights
    path = home / "serving" / "demo-serve-config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    serve_bin = str(Path(sys.executable).with_name("serve"))
    what = f"user_config weights {weights}" if weights else f"http port {port}"
    print(f"$ serve deploy {SERVE_CONFIG}   ({what})", flush=True)
    subprocess.run(
        [serve_bin, "deploy", str(path), "--address", cluster.address], env=ray_env(), check=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            live = _get(f"{url}/variants")
            if not weights or {v["variant"]: v["weight"] for v in live["variants"]} == weights:
                return url
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the serving app did not come up as deployed at {url}; see `serve status`")


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def _get_when_up(url: str, wait_s: float = 60) -> dict[str, Any]:
    """GET a route that answers 503 while what it asks is away (a busy or restarting drift
    actor), again until it answers or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _get(url)
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def send_traffic(url: str, data_dir: Path, users: int = 1500, per_user: int = 2) -> dict[str, int]:
    """Keyed requests from holdout-like records; each user converts with a variant-dependent
    chance (control 10%, treatment 13%) reported through /feedback."""
    import random

    import pandas as pd

    frame = pd.read_parquet(sorted(data_dir.glob("*.parquet"))[-1]).head(users)
    records = json.loads(frame.drop(columns=["ts"]).to_json(orient="records"))
    rng = random.Random(0)
    rates = {"control": 0.10, "treatment": 0.13}

    def one(i: int) -> str:
        rec = records[i % len(records)]
        out = _post(f"{url}/predict", {"instances": [rec], "key": f"user-{i % users}"})
        if rng.random() < 0.9:  # not every outcome comes back
            _post(
                f"{url}/feedback",
                {
                    "request_id": out["request_id"],
                    "outcome": int(rng.random() < rates.get(out["variant"], 0.1)),
                },
            )
        return str(out["variant"])

    with cf.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(one, range(users * per_user)))
    return {v: served.count(v) for v in sorted(set(served))}


def send_drifted(url: str, rows: int, scenario: str = "covariate_shift") -> None:
    """`rows` records from a drift scenario, 100 per request, to the control variant."""
    frame = datagen.generate(rows, seed=7, scenario=scenario)
    records = json.loads(frame.drop(columns=["ts"]).to_json(orient="records"))
    chunks = [records[i : i + 100] for i in range(0, len(records), 100)]
    with cf.ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda c: _post(
                    f"{url}/predict", {"instances": c}, {"X-Shipyard-Variant": "control"}
                ),
                chunks,
            )
        )


def drift_summary(status: dict[str, Any]) -> str:
    lines = [
        f"drift (GET /drift) — control v{status['model_version']}: "
        f"{'DRIFTED ' + str(status['drifting']) if status['drifted'] else 'no drift'}, "
        f"{status['windows']} windows, last of {status['last_window']['rows']} rows"
    ]
    for name, f in sorted(status["features"].items(), key=lambda kv: -kv[1]["psi"]):
        if f["drifted"] or f["psi"] >= 0.01:
            lines.append(
                f"  {name:16s} PSI {f['psi']:.3f}  JS {f['js']:.3f}  p_adj {f['p_adjusted']:.2g}"
                f"  {'DRIFTED' if f['drifted'] else 'ok'} {' '.join(f['quality_flags'])}"
            )
    return "\n".join(lines)


def ab_summary(report: dict[str, Any]) -> str:
    lines = [f"A/B report (GET /ab) — metric {report['metric']}, control {report['control']}"]
    for name, v in report["variants"].items():
        lat = v["latency_ms"]
        ci = v["outcome_ci95"]
        lines.append(
            f"  {name:<10} v{v['model_version']}  weight {v['weight']:>5.1f}  requests {v['requests']:>5}"
            f"  errors {v['errors']}  p50 {lat['p50'] or 0:.1f} ms  p99 {lat['p99'] or 0:.1f} ms"
            + (
                f"  conversion {v['outcome_mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={v['outcomes']})"
                if ci
                else ""
            )
        )
    for name, c in report["comparisons"].items():
        seq = c["sequential_p_value"]
        lines.append(
            f"  {name} vs {c['against']}: lift {c['lift'] if c['lift'] is not None else float('nan'):+.1%}"
            f"  z-test per key p={c['p_value'] if c['p_value'] is not None else float('nan'):.3g}"
            f"  always-valid p={'n/a' if seq is None else f'{seq:.3g}'}"
        )
        lines.append(f"  recommendation: {c['recommendation']} ({c['reason']})")
    srm = report["srm"]
    if srm["p_value"] is not None:
        lines.append(
            f"  sample ratio: observed {srm['observed']}, p={srm['p_value']:.3g}"
            f" ({'MISMATCH' if srm['flagged'] else 'ok'})"
        )
    return "\n".join(lines)


def stop_serving(cluster: LocalCluster, home: Path, model: str) -> None:
    """`serve shutdown`: each router hands what it buffered to the store and to request capture
    before it stops; then say where the capture is (Parquet, readable with no Shipyard code)."""
    serve_bin = str(Path(sys.executable).with_name("serve"))
    print("\n$ serve shutdown -y   (routers write what they buffered)", flush=True)
    subprocess.run([serve_bin, "shutdown", "-y", "--address", cluster.address], env=ray_env(),
                   check=False, timeout=180)  # fmt: skip
    # The CLI returns once the shutdown is asked for; the routers write their buffers as their
    # replicas stop. Wait until Serve lists no application (the routers have stopped).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if not serve_details(cluster.address).get("applications"):
                break
        except (OSError, ValueError):  # the controller itself is gone: so are the routers
            break
        time.sleep(1)
    where = home / "serving" / model / "capture" / "requests"
    if not where.exists():
        print(f"no request capture under {where}")
        return
    import pandas as pd

    served = pd.read_parquet(where)
    live = served[~served["served_shadow"]]
    print(f"request capture: {len(live)} served records with every raw feature, "
          f"{live['served_request_id'].nunique()} requests, under {where}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", default="state", help="state directory (SHIPYARD_HOME)")
    ap.add_argument("--rows", type=int, default=50_000, help="rows of demo data to generate")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--no-serve", action="store_true", help="train only; skip serving and A/B")
    ap.add_argument(
        "--keep-serving", action="store_true", help="keep the app up until Ctrl-C at the end"
    )
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

    token = os.environ.get("SHIPYARD_ADMIN_TOKEN") or secrets.token_urlsafe(16)
    cluster_env = {
        HOME_ENV: str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SHIPYARD_ADMIN_TOKEN": token,
        # Ray 2.60's throughput-optimised Serve: faster here in benchmarks/serving.py.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }
    print(f"starting a local Ray cluster ({args.num_cpus} CPUs) ...", flush=True)
    log = home / "logs" / "ray-start.log"
    with LocalCluster(num_cpus=args.num_cpus, log_path=log, env=cluster_env) as cluster:
        print(f"Ray dashboard and job API at {cluster.address}", flush=True)
        rc = train(cluster, home, data_dir, tracking_uri, [])
        after = {int(v.version) for v in registry.versions(name)} - before
        if rc != 0 or not after:
            print(
                f"\nthe training job did not register a version (exit code {rc}); see its log above",
                file=sys.stderr,
            )
            return rc or 1
        print("\n" + summarize(registry, name, max(after)) + "\n", flush=True)
        if args.no_serve:
            return 0
        aliases = registry.aliases(name)
        if aliases.get("champion") == aliases.get("challenger"):
            print("training a second candidate so there is something to A/B test ...", flush=True)
            if train(cluster, home, data_dir, tracking_uri, CHALLENGER_OVERRIDES) != 0:
                print("the second candidate did not register; serving the champion alone")
        aliases = registry.aliases(name)
        print(
            f"\nserving champion v{aliases['champion']} and challenger v{aliases['challenger']} 90/10"
        )
        from shipyard.compute.localray import free_port

        proxy = deploy(cluster, home, free_port())
        # The router's own port (Serve's direct ingress): no proxy hop (~3x the requests/s, README).
        url = (direct_urls(cluster.address) or [proxy])[0]
        print(f"app up at {url} (the router's own port; `shipyard ingress` lists them) and at "
              f"{proxy} (Serve's proxy); sending keyed traffic with simulated outcomes ...",
              flush=True)  # fmt: skip
        served = send_traffic(url, data_dir)
        print(f"served: {served}")
        time.sleep(0.5)
        print("\n" + ab_summary(_get(f"{url}/ab")) + "\n")
        loaded = {v["variant"]: v["loaded_at"] for v in _get(f"{url}/variants")["variants"]}
        deploy(
            cluster, home, int(proxy.rsplit(":", 1)[1]), weights={"control": 80, "treatment": 20}
        )
        live = _get(f"{url}/variants")["variants"]
        same = all(v["loaded_at"] == loaded[v["variant"]] for v in live)
        print(
            "live weights now "
            + ", ".join(f"{v['variant']} {v['weight']:g}" for v in live)
            + ("; no replica restarted" if same else "; replicas were restarted")
        )
        window = _get_when_up(f"{url}/drift")["variants"]["control"]["settings"]["window_rows"]
        print(
            f"\nsending {2 * window} drifted records to control (scenario covariate_shift: "
            "income and sessions_30d up ~1 sd) ...",
            flush=True,
        )
        send_drifted(url, 2 * window)
        deadline, status = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            status = _get_when_up(f"{url}/drift")["variants"]["control"]
            if status.get("windows", 0) >= 2 and status.get("drifted"):
                break
            time.sleep(1)
        print(drift_summary(status))
        for e in EventLog(home / "events.jsonl").read():
            if e["kind"] == "drift_started":
                print(
                    f"alert: {e['kind']} {e['model']} v{e['version']} {e['variant']} {e['features']}"
                )
        if not args.keep_serving:
            stop_serving(cluster, home, name)
            print(
                "\nThe app stopped with this demo's cluster. To keep it up and try it yourself:\n"
                "  make demo KEEP=1    (python -m shipyard.demo --keep-serving)"
            )
            return 0
        print(
            f"\nThe app stays up at {url} until Ctrl-C. Try it:"
            f"\n  curl -s {url}/variants\n  curl -s {url}/ab\n  curl -s {url}/drift"
            f"\n  open {url}/drift/control/report\n  open {url}/docs"
            f"\n  curl -s -X PUT {url}/variants -H 'Authorization: Bearer {token}'"
            ' -H "Content-Type: application/json" -d \'{"weights": {"treatment": 50}}\'',
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the app and the cluster ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
