"""Serving benchmark, side by side in one run, same model, same machine, same load generator.

  (a) bare FastAPI + uvicorn + ONNX Runtime, no Ray: the practical limit
  (b) a minimal one-deployment Ray Serve app with the same ONNX model
  (c) Shipyard: router + two live variants (50/50, keyed traffic) + the experiment store

Single-record requests at fixed concurrency (p50, p99, requests/s), then batched requests
(rows/s) against bare ONNX Runtime on the same cores. `python -m benchmarks.serving --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "bench-serving"


def make_model(home: Path, rows: int = 20000) -> tuple[str, Path, list[dict[str, Any]]]:
    """Train a small XGBoost model, export the one-graph ONNX, register it in a local MLflow."""
    import xgboost as xgb

    from shipyard.bundle.files import write_bundle
    from shipyard.bundle.graph import build_onnx
    from shipyard.bundle.schema import Feature, InputSchema
    from shipyard.demo import datagen
    from shipyard.registry import Registry

    df = datagen.generate(rows, seed=0)
    feats = [Feature(c, "numeric") for c in datagen.NUMERIC] + [
        Feature(c, "categorical", tuple(sorted(df[c].dropna().astype(str).unique())))
        for c in datagen.CATEGORICAL
    ]
    schema = InputSchema(
        "binary", datagen.TARGET, tuple(feats), (0, 1), datagen.TIME_COLUMN, (datagen.ID_COLUMN,)
    )
    x = schema.encode(df)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2},
        xgb.DMatrix(x, label=df[datagen.TARGET].astype(int), feature_names=schema.names),
        num_boost_round=100,
    )
    from sklearn.metrics import roc_auc_score

    from shipyard.monitoring.drift import profile_of_frame

    scores = booster.predict(xgb.DMatrix(x, feature_names=schema.names))
    profile = profile_of_frame(df, datagen.NUMERIC, datagen.CATEGORICAL, scores=scores)
    evaluation = {"task": "binary", "metrics": {"auc": roc_auc_score(df[datagen.TARGET], scores)}}
    files = {
        "model.onnx": build_onnx(booster, schema).SerializeToString(),
        "booster.ubj": bytes(booster.save_raw("ubj")),
        "input_schema.json": schema.to_json().encode(),
        "reference_profile.json": json.dumps(profile).encode(),  # the drift actors' reference
        "evaluation.json": json.dumps(evaluation).encode(),
    }
    bundle = home / "bundle" / "model"
    write_bundle(bundle, files)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    reg = Registry(uri)
    run = reg.start_run(reg.ensure_experiment(MODEL), "bench", tags={})
    reg.log_artifacts(run, bundle, "model")
    reg.end_run(run)
    version = reg.register(MODEL, run, tags={})
    reg.set_alias(MODEL, "champion", version)
    reg.set_alias(MODEL, "challenger", reg.register(MODEL, run, tags={}))
    sample = df.drop(columns=[datagen.TIME_COLUMN]).head(500)
    records = json.loads(sample.to_json(orient="records"))
    return uri, bundle, records


async def _load(url: str, bodies: list[bytes], concurrency: int, warmup: int) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        for b in bodies[:warmup]:
            async with s.post(url, data=b, headers={"Content-Type": "application/json"}) as r:
                await r.read()

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                async with s.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(bodies) / wall,
        "errors": errors,
        "requests": len(bodies),
    }


def measure(
    url: str,
    records: list[dict[str, Any]],
    n: int,
    concurrency: int,
    batch: int = 1,
    keyed: bool = False,
) -> dict[str, float]:
    bodies = []
    for i in range(n):
        body: dict[str, Any] = {
            "instances": [records[(i + j) % len(records)] for j in range(batch)]
        }
        if keyed:
            body["key"] = f"user-{i % 5000}"
        bodies.append(json.dumps(body).encode())
    out = asyncio.run(_load(url, bodies, concurrency, warmup=min(200, n // 5)))
    out["rows_per_s"] = out["rps"] * batch
    return out


def wait_http(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def bare_ort_rows_per_s(
    bundle: Path, records: list[dict[str, Any]], batch: int, threads: int
) -> float:
    from shipyard.bundle.graph import OnnxPredictor
    from shipyard.bundle.schema import InputSchema

    schema = InputSchema.from_dict(json.loads((bundle / "input_schema.json").read_text()))
    pred = OnnxPredictor((bundle / "model.onnx").read_bytes(), schema, threads=threads)
    feeds = [
        schema.validate_records([records[(i + j) % len(records)] for j in range(batch)])
        for i in range(50)
    ]
    for f in feeds[:10]:
        pred.run(f)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 3:
        pred.run(feeds[n % len(feeds)])
        n += 1
    return n * batch / (time.perf_counter() - t0)


TURNS = 2
# What each optional part costs: the same app with it switched off, deployed beside the full app,
# all of them measured in turns (full, no drift, no capture, full, ...) so that machine noise
# falls on every one alike.
TOGGLES: dict[str, dict[str, Any]] = {
    "drift": {"drift": {"enabled": False}},  # drift logging: replicas feed the drift actors
    "capture": {"capture": {"enabled": False}},  # request capture: Parquet under state_uri
    # An answer held until its A/B record's segment is written (a killed router loses none).
    "durable_answers": {"ab": {"durable_answers": False}},
}

SERVE_MODES = {
    "default": {},
    # Ray 2.60's throughput-optimised Serve: user code on the replica's loop, gRPC between
    # deployments, buffered request logs, GC frozen after start-up.
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def run_serve(
    home: Path, bundle: Path, records: list[dict[str, Any]], n: int, concurrency: int, batch: int
) -> dict[str, Any]:
    """(b) and (c) on a fresh local Ray started from this process's environment."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from benchmarks.bare_server import minimal_serve_app
    from serving.app import build_app
    from shipyard.compute.ingress import ingress_urls
    from shipyard.compute.localray import free_port

    out: dict[str, Any] = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        # Per-request access logs off in both apps (a production setting; they cost ~10% here).
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        base = f"http://127.0.0.1:{port}"
        serve.run(minimal_serve_app(str(bundle)), name="minimal", route_prefix="/minimal")
        out["minimal"] = measure(f"{base}/minimal/predict", records, n, concurrency)
        out["minimal_batched"] = measure(
            f"{base}/minimal/predict", records, max(50, n // 20), concurrency, batch
        )
        serve.delete("minimal")
        args = {
            "model": MODEL,
            "variants": [
                {"name": "control", "version": "champion", "weight": 50, "num_replicas": 1},
                {"name": "treatment", "version": "challenger", "weight": 50, "num_replicas": 1},
            ],
            "state_uri": str(home / "serving"),
            "limits": {"max_instances": max(1000, batch)},
        }
        serve.run(build_app(args), name="shipyard", route_prefix="/shipyard")
        out["shipyard"] = measure(f"{base}/shipyard/predict", records, n, concurrency, keyed=True)
        out["shipyard_batched"] = measure(
            f"{base}/shipyard/predict", records, max(50, n // 20), concurrency, batch, keyed=True
        )
        # The same app at the router replica's own port (direct ingress, on in throughput mode).
        details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
        direct = ingress_urls(details, "shipyard")
        if direct:
            out["shipyard_direct"] = measure(
                f"{direct[0]}/predict", records, n, concurrency, keyed=True
            )
            out["shipyard_direct_batched"] = measure(
                f"{direct[0]}/predict", records, max(50, n // 20), concurrency, batch, keyed=True
            )
        # One part at a time beside the full app (two apps fit the benchmark's 2 CPUs, three
        # do not): full, part off, full, part off.
        turns: dict[str, dict[str, list[dict[str, float]]]] = {}
        for part, change in TOGGLES.items():
            off = {**args, "state_uri": str(home / f"serving-no{part}"), **change}
            serve.run(build_app(off), name=f"no{part}", route_prefix=f"/no{part}")
            turns[part] = {"on": [], "off": []}
            for _ in range(TURNS):
                for name, prefix in (("on", "shipyard"), ("off", f"no{part}")):
                    turns[part][name].append(
                        measure(f"{base}/{prefix}/predict", records, n, concurrency, keyed=True)
                    )
            serve.delete(f"no{part}")
        out["toggle_turns"] = turns
        serve.delete("shipyard")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def run(n: int, concurrency: int, batch: int) -> dict[str, Any]:
    from shipyard.compute.localray import free_port

    results: dict[str, Any] = {"requests": n, "concurrency": concurrency, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="shipyard-serve-bench-") as tmp:
        home = Path(tmp)
        uri, bundle, records = make_model(home)
        env = {**os.environ, "SHIPYARD_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
        (home / "records.json").write_text(json.dumps(records))

        # (a) bare FastAPI + uvicorn + ORT, one process, same validation and model.
        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchmarks.bare_server:app", "--port", str(port),
             "--log-level", "warning", "--no-access-log"],
            env={**env, "BENCH_BUNDLE": str(bundle)},
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            url = f"http://127.0.0.1:{port}/predict"
            results["bare"] = measure(url, records, n, concurrency)
            results["bare_batched"] = measure(url, records, max(50, n // 20), concurrency, batch)
        finally:
            bare.terminate()
            bare.wait(10)
        results["ort_rows_per_s"] = bare_ort_rows_per_s(bundle, records, batch, threads=2)

        # (b) and (c), once per Serve mode, each on a fresh cluster (the modes are env vars).
        for mode, mode_env in SERVE_MODES.items():
            out = home / f"serve-{mode}.json"
            subprocess.run(
                [sys.executable, "-m", "benchmarks.serving", "--serve-only", str(home),
                 "--requests", str(n), "--concurrency", str(concurrency), "--batch", str(batch),
                 "--out", str(out)],
                env={**env, **mode_env}, check=True,
            )  # fmt: skip
            results[mode] = json.loads(out.read_text())
    return results


def _direct(m: dict[str, Any], field: str) -> float:
    """A direct-ingress figure of one Serve mode (NaN where that mode has no direct ingress)."""
    return float(m["shipyard_direct"][field]) if "shipyard_direct" in m else float("nan")


def table(r: dict[str, Any]) -> str:
    def row(name: str, x: dict[str, Any]) -> str:
        return f"| {name} | {x['p50_ms']:.2f} ms | {x['p99_ms']:.2f} ms | {x['rps']:.0f} | {x['errors']} |"

    lines = [
        f"Serving benchmark — single-record requests, {r['requests']} per server, concurrency "
        f"{r['concurrency']}, 2-core machine shared with the load generator  ",
        "",
        "| server | p50 | p99 | requests/s | errors |",
        "|---|---|---|---|---|",
        row("(a) bare FastAPI + uvicorn + ONNX Runtime (no Ray)", r["bare"]),
    ]
    for mode in SERVE_MODES:
        m = r[mode]
        lines += [
            row(f"(b) minimal Ray Serve app, one deployment — {mode} Serve", m["minimal"]),
            row(f"(c) Shipyard: router + 2 live variants, keyed — {mode} Serve", m["shipyard"]),
        ]
        if "shipyard_direct" in m:
            lines.append(row(f"(c') Shipyard at the router's own port (direct ingress) — {mode} "
                             "Serve", m["shipyard_direct"]))  # fmt: skip
    lines += ["", "| ratio | " + " | ".join(f"{m} Serve" for m in SERVE_MODES) + " | goal |",
              "|---|" + "---|" * len(SERVE_MODES) + "---|"]  # fmt: skip

    def ratio(fn: Any) -> str:
        return " | ".join(f"{fn(r[m]):.2f}" for m in SERVE_MODES)

    lines += [
        f"| (c)/(b) p50 | {ratio(lambda m: m['shipyard']['p50_ms'] / m['minimal']['p50_ms'])} | <= 1.25 |",
        f"| (c)/(b) throughput | {ratio(lambda m: m['shipyard']['rps'] / m['minimal']['rps'])} | >= 0.8 |",
        f"| (c)/(a) p50 | {ratio(lambda m: m['shipyard']['p50_ms'] / r['bare']['p50_ms'])} | — |",
        f"| (c')/(b) throughput | {ratio(lambda m: _direct(m, 'rps') / m['minimal']['rps'])} | — |",
        f"| (c')/(a) throughput | {ratio(lambda m: _direct(m, 'rps') / r['bare']['rps'])} | >= 0.25 |",
        "",
        f"Batched requests ({r['batch']} records each), rows/s:",
        "",
        "| server | rows/s | vs bare ONNX Runtime in-process | vs (a) bare server |",
        "|---|---|---|---|",
        f"| ONNX Runtime in-process, 2 threads, pre-encoded | {r['ort_rows_per_s']:,.0f} | 1.00 | — |",
        f"| (a) bare FastAPI + uvicorn + ORT | {r['bare_batched']['rows_per_s']:,.0f} | "
        f"{r['bare_batched']['rows_per_s'] / r['ort_rows_per_s']:.2f} | 1.00 |",
    ]
    for mode in SERVE_MODES:
        for name, key in (
            ("(b) minimal Serve", "minimal_batched"),
            ("(c) Shipyard", "shipyard_batched"),
            ("(c') Shipyard, direct ingress", "shipyard_direct_batched"),
        ):
            if key not in r[mode]:
                continue
            v = r[mode][key]["rows_per_s"]
            lines.append(
                f"| {name} — {mode} | {v:,.0f} | {v / r['ort_rows_per_s']:.2f} | "
                f"{v / r['bare_batched']['rows_per_s']:.2f} |"
            )
    lines += ["", "What drift logging, request capture and durable answers cost (the same app "
              "with the part on vs "
              "off, measured in turns), single records:",
              "", "| part | Serve mode | p50 on | p50 off | p50 on/off | requests/s on/off | goal |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    goals = {"drift": "p50 <= 1.05", "capture": "p50 and requests/s within 5%",
             "durable_answers": "none (what no loss on a router's death costs)"}  # fmt: skip
    for part in TOGGLES:
        for mode in SERVE_MODES:
            t = r[mode].get("toggle_turns", {}).get(part)
            if not t:
                continue
            p50 = {k: statistics.median(x["p50_ms"] for x in v) for k, v in t.items()}
            rps = {k: statistics.median(x["rps"] for x in v) for k, v in t.items()}
            lines.append(
                f"| {part} | {mode} | {p50['on']:.2f} ms | {p50['off']:.2f} ms | "
                f"{p50['on'] / p50['off']:.3f} | {rps['on'] / rps['off']:.3f} | {goals[part]} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Serving benchmark: bare ORT vs minimal Serve vs Shipyard"
    )
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="serving", help="results file name (NAME.md, NAME.json)")
    ap.add_argument("--serve-only", metavar="HOME", help=argparse.SUPPRESS)  # child of run()
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.serve_only:
        home = Path(args.serve_only)
        records = json.loads((home / "records.json").read_text())
        out = run_serve(
            home, home / "bundle" / "model", records, args.requests, args.concurrency, args.batch
        )
        Path(args.out).write_text(json.dumps(out))
        return
    r = run(args.requests, args.concurrency, args.batch)
    text = table(r)
    print(text)
    where = Path(args.out)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{args.name}.md").write_text(text + "\n")
    (where / f"{args.name}.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
