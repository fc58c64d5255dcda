"""`make bench` drift table: detection power, false alarms, delay and ingest speed of Shipyard's
drift statistics, side by side with Evidently (a widely used drift library) on the same windows.

Streams come from the demo data generator with 30 features (13 + 17 extra numeric). Shifts of
known size are injected into one feature: the mean of `income` moved by 0.1, 0.25 and 0.5
reference standard deviations, its variance times 1.5, the share of one `country` category
raised by 5 and 10 points, 5 more points of missing `age`, and 2% of rows in an unseen
`country`. No-drift windows are fresh samples of the same process as the reference.

- power: share of drifted windows in which the shifted feature is flagged;
- false alarms: share of no-drift windows in which ANY feature is flagged (family-wise);
- delay: rows from the change to the first drift_started, the change falling anywhere in a
  window (streamed in 500-row batches, the way replicas ship them);
- ingest: rows/s of `DriftMonitor.add` (the actor's work per batch) and of a real Ray actor fed
  1,000-row batches, both at 30 features.

Evidently runs its DataDriftPreset defaults (per column: K-S / chi-square below 1,000 rows,
Wasserstein / Jensen-Shannon distance above) on the same pandas windows; it is installed only by
`make bench` (benchmarks/requirements-bench.lock), never a dependency of Shipyard.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.run import machine
from shipyard.config.drift import DriftSettings
from shipyard.demo import datagen
from shipyard.monitoring.drift import (
    Binner,
    DriftMonitor,
    Reference,
    WindowCounts,
    judge_window,
    profile_of_frame,
)

EXTRA = 17
SHIFTED = {"numeric": "income", "category": "country", "missing": "age"}
SCENARIOS = [
    "mean +0.10 sd", "mean +0.25 sd", "mean +0.50 sd", "variance x1.5",
    "category +5 pts", "category +10 pts", "missing +5 pts", "unseen category",
]  # fmt: skip


def columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric = [*datagen.NUMERIC, *[c for c in frame.columns if c.startswith("x")]]
    return numeric, list(datagen.CATEGORICAL)


def sample(rows: int, seed: int) -> pd.DataFrame:
    return datagen.generate(rows, seed=seed, extra_numeric=EXTRA)


class Shifter:
    """Applies a named shift of known size to a no-drift frame."""

    def __init__(self, ref: pd.DataFrame) -> None:
        inc = ref[SHIFTED["numeric"]]
        self.mean, self.sd = float(inc.mean()), float(inc.std())
        shares = ref[SHIFTED["category"]].value_counts(normalize=True)
        self.category = str(shares.index[len(shares) // 2])  # a mid-frequency category
        self.share = float(shares.iloc[len(shares) // 2])

    def __call__(self, frame: pd.DataFrame, name: str, rng: np.random.Generator) -> pd.DataFrame:
        f = frame.copy()
        n = len(f)
        col, cat = SHIFTED["numeric"], SHIFTED["category"]
        if name.startswith("mean"):
            f[col] = f[col] + float(name.split("+")[1].split()[0]) * self.sd
        elif name == "variance x1.5":
            f[col] = self.mean + (f[col] - self.mean) * np.sqrt(1.5)
        elif name.startswith("category"):
            points = float(name.split("+")[1].split()[0]) / 100
            others = np.flatnonzero((f[cat] != self.category).to_numpy())
            share_others = 1 - self.share  # move `points` of mass from the others, at random
            k = rng.binomial(len(others), min(1.0, points / share_others))
            f.loc[f.index[rng.choice(others, k, replace=False)], cat] = self.category
        elif name == "missing +5 pts":
            f.loc[f.index[rng.random(n) < 0.05], SHIFTED["missing"]] = np.nan
        elif name == "unseen category":
            f.loc[f.index[rng.random(n) < 0.02], cat] = "ZZ"
        return f


def feed_of(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """Columns the way a model replica holds them (numeric float32, categories as strings)."""
    out: dict[str, Any] = {c: frame[c].to_numpy(np.float32).reshape(-1, 1) for c in numeric}
    for c in categorical:
        out[c] = frame[c].astype("string").fillna("").to_numpy(object).reshape(-1, 1)
    return out


def shipyard_verdict(
    ref: Reference, binner: Binner, settings: DriftSettings, feed: dict[str, Any]
) -> set[str]:
    w = WindowCounts.empty(ref)
    w.add(binner, feed)
    return set(judge_window(ref, w, settings)["drifted_features"])


def run_evidently(
    python: str, ref: pd.DataFrame, frames: list[pd.DataFrame], cols: list[str]
) -> list[dict[str, Any]]:
    """Evidently's verdict per frame, from benchmarks/drift_evidently.py in its own venv."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        ref[cols].to_parquet(Path(tmp) / "reference.parquet", index=False)
        windows = pd.concat([f[cols].assign(window=i) for i, f in enumerate(frames)])
        windows.to_parquet(Path(tmp) / "windows.parquet", index=False)
        script = Path(__file__).with_name("drift_evidently.py")
        subprocess.run([python, str(script), tmp], check=True)
        lines = (Path(tmp) / "evidently.jsonl").read_text().splitlines()
    return sorted((json.loads(x) for x in lines), key=lambda r: r["window"])


def detection_delay(
    ref: Reference, settings: DriftSettings, shifter: Shifter, scenario: str, streams: int,
    window: int, numeric: list[str], categorical: list[str], seed: int,
) -> list[int]:  # fmt: skip
    target = SHIFTED["category" if "category" in scenario else
                     "missing" if "missing" in scenario else "numeric"]  # fmt: skip
    rng = np.random.default_rng(seed)
    delays = []
    for s in range(streams):
        mon = DriftMonitor(ref, settings)
        change = int(rng.integers(0, window)) + window  # one clean window first
        t, found = 0, None
        while found is None and t < change + 6 * window:
            batch = sample(500, seed=seed * 1000 + s * 100 + t // 500)
            if t >= change:
                batch = shifter(batch, scenario, rng)
            events = mon.add(feed_of(batch, numeric, categorical), now=float(t))
            t += 500
            if any(e["kind"] == "drift_started" and target in e["features"] for e in events):
                found = t - change
        delays.append(found if found is not None else -1)
    return delays


def ingest_speed(
    ref: Reference, profile: dict[str, Any], settings: DriftSettings,
    feeds: list[dict[str, Any]], rows: int,
) -> dict[str, float]:  # fmt: skip
    """Rows/s of the bare monitor in this process, and of serving's own DriftActor class as a
    Ray actor fed the batches replicas send (scores included, so the review queue samples too)."""
    import os
    import tempfile

    mon = DriftMonitor(ref, settings)
    t0 = time.perf_counter()
    for f in feeds:
        mon.add(f)
    local = rows / (time.perf_counter() - t0)

    import ray

    from serving.drift import DriftActor
    from serving.settings import AppSettings
    from shipyard.config.serving import ServingConfig

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rng = np.random.default_rng(0)
    batches = [
        {"feed": f, "scores": rng.random(len(next(iter(f.values())))), "type_errors": {},
         "rows": len(next(iter(f.values()))), "source": "bench", "dropped_total": 0}
        for f in feeds
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="drift-ingest-") as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        (bundle / "reference_profile.json").write_text(json.dumps(profile))
        (bundle / "evaluation.json").write_text(json.dumps({"task": "binary", "metrics": {}}))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            config = ServingConfig.model_validate(
                {"model": "bench", "variants": [{"name": "control", "version": 1, "weight": 1}],
                 "drift": {"window_rows": settings.window_rows}}
            )  # fmt: skip
            app = AppSettings(config=config, versions={"control": 1}, state_uri=tmp, review_dir=tmp,
                              events_path=f"{tmp}/events.jsonl")  # fmt: skip
            actor: Any = ray.remote(num_cpus=0)(DriftActor).remote(
                app, "control", loader=lambda *_: bundle
            )
            ray.get(actor.ingest.remote(batches[0]))
            t0 = time.perf_counter()
            ray.get([actor.ingest.remote(b) for b in batches])  # replicas send, never wait
            remote = rows / (time.perf_counter() - t0)
        finally:
            ray.shutdown()
    return {"monitor_rows_per_s": local, "actor_rows_per_s": remote,
            "batch_rows": len(next(iter(feeds[0].values())))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=5000, help="rows per window")
    ap.add_argument("--windows", type=int, default=100, help="drifted windows per shift")
    ap.add_argument("--null-windows", type=int, default=300, help="no-drift windows (>= 200)")
    ap.add_argument("--evidently-python", help="python of the venv with Evidently (make bench)")
    ap.add_argument(
        "--evidently-windows", type=int, default=10,
        help="drifted windows per shift for Evidently (it takes seconds per window)",
    )  # fmt: skip
    ap.add_argument("--evidently-null-windows", type=int, default=40)
    ap.add_argument("--streams", type=int, default=20, help="streams per shift for the delay")
    ap.add_argument("--reference-rows", type=int, default=50_000)
    ap.add_argument("--ingest-rows", type=int, default=400_000)
    ap.add_argument(
        "--batch-rows", type=int, default=5000, help="rows per replica send (drift.batch_rows)"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()

    ref_frame = sample(a.reference_rows, seed=0)
    numeric, categorical = columns(ref_frame)
    assert len(numeric) + len(categorical) == 30
    profile = profile_of_frame(ref_frame, numeric, categorical)
    ref = Reference.from_profile(profile)
    binner, settings, shifter = Binner(ref), DriftSettings(window_rows=a.window), Shifter(ref_frame)
    ev_frames: list[pd.DataFrame] = []
    ev_of: dict[str, list[int]] = {}

    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    for scenario in ["none", *SCENARIOS]:
        n = a.null_windows if scenario == "none" else a.windows
        target = None if scenario == "none" else SHIFTED[
            "category" if ("category" in scenario and "unseen" not in scenario)
            else "missing" if "missing" in scenario
            else "category" if "unseen" in scenario else "numeric"]  # fmt: skip
        ours, t_ours = [], 0.0
        ev_n = a.evidently_null_windows if scenario == "none" else a.evidently_windows
        for k in range(n):
            frame = sample(a.window, seed=10_000 + 1000 * len(rows) + k)
            if scenario != "none":
                frame = shifter(frame, scenario, rng)
            feed = feed_of(frame, numeric, categorical)
            t0 = time.perf_counter()
            ours.append(shipyard_verdict(ref, binner, settings, feed))
            t_ours += time.perf_counter() - t0
            if a.evidently_python and k < ev_n:
                ev_of.setdefault(scenario, []).append(len(ev_frames))
                ev_frames.append(frame)

        def rate(verdicts: list[set[str]], tgt: str | None = target) -> float | None:
            if not verdicts:
                return None
            hit = [bool(v) if tgt is None else tgt in v for v in verdicts]
            return sum(hit) / len(verdicts)

        row: dict[str, Any] = {
            "scenario": scenario, "windows": n, "feature": target,
            "shipyard": rate(ours),
            "shipyard_other_features": rate([v - {target} for v in ours], None) if target else None,
            "shipyard_ms_per_window": 1000 * t_ours / n,
        }  # fmt: skip
        if scenario != "none":
            d = detection_delay(ref, settings, shifter, scenario, a.streams, a.window,
                                numeric, categorical, seed=len(rows))  # fmt: skip
            found = [x for x in d if x >= 0]
            row["delay_median_rows"] = statistics.median(found) if found else None
            row["delay_detected"] = len(found) / len(d)
        rows.append(row)
        print(json.dumps(row), flush=True)

    ev = run_evidently(a.evidently_python, ref_frame, ev_frames, [*numeric, *categorical]) \
        if a.evidently_python else []  # fmt: skip
    for row in rows:
        got = [ev[i] for i in ev_of.get(row["scenario"], [])]
        theirs = [set(g["drifted"]) for g in got]
        target = row["feature"]
        hits = [bool(v) if target is None else target in v for v in theirs]
        row.update({
            "evidently_windows": len(got),
            "evidently": sum(hits) / len(got) if got else None,
            "evidently_other_features": (
                sum(bool(v - {target}) for v in theirs) / len(got) if got and target else None),
            "evidently_ms_per_window":
                1000 * statistics.mean(g["seconds"] for g in got) if got else None,
        })  # fmt: skip

    feeds = [
        feed_of(sample(a.batch_rows, seed=50_000 + i), numeric, categorical)
        for i in range(a.ingest_rows // a.batch_rows)
    ]  # prepared up front: the timing is the drift side's work only
    speed = ingest_speed(ref, profile, settings, feeds, a.ingest_rows)
    print(json.dumps(speed), flush=True)
    result = {"machine": machine(), "window": a.window, "rows": rows, "ingest": speed,
              "features": 30, "settings": settings.__dict__}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "drift.json").write_text(json.dumps(result, indent=1))
    (a.out / "drift.md").write_text(markdown(result))
    print(markdown(result))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(r: dict[str, Any]) -> str:
    rows = {x["scenario"]: x for x in r["rows"]}
    null = rows["none"]
    out = [
        f"### Drift: detection on {r['window']:,}-row windows, 30 features, Shipyard vs Evidently",
        "",
        "| shift (one feature) | Shipyard power | Evidently power | Shipyard median delay (rows) "
        "| other features flagged (Shipyard / Evidently) |",
        "|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        x = rows[name]
        delay = "-" if x["delay_median_rows"] is None else f"{x['delay_median_rows']:,.0f}"
        out.append(
            f"| {name} (`{x['feature']}`) | {_pct(x['shipyard'])} | {_pct(x['evidently'])} | "
            f"{delay} ({_pct(x['delay_detected'])} found) | "
            f"{_pct(x['shipyard_other_features'])} / {_pct(x['evidently_other_features'])} |"
        )
    ing = r["ingest"]
    ev_ms = null["evidently_ms_per_window"]
    ratio = f"{ev_ms / null['shipyard_ms_per_window']:.0f}x" if ev_ms else "-"
    out += [
        "",
        "| no-drift windows | Shipyard | Evidently |",
        "|---|---|---|",
        f"| family-wise false alarms (any of 30 features flagged) | {_pct(null['shipyard'])} of "
        f"{null['windows']} | {_pct(null['evidently'])} of {null['evidently_windows']} |",
        f"| time per window (Shipyard: bin and judge; Evidently: its report) | {null['shipyard_ms_per_window']:.1f} ms | "
        f"{'-' if ev_ms is None else f'{ev_ms:.0f} ms'} ({ratio}) |",
        "",
        f"Ingest at 30 features: `DriftMonitor.add` {ing['monitor_rows_per_s']:,.0f} rows/s; serving's "
        f"`DriftActor` as a Ray actor fed {ing['batch_rows']:,}-row batches (`drift.batch_rows`) "
        f"{ing['actor_rows_per_s']:,.0f} rows/s (goal >= 200,000).",
        _goals(r),
        f"Machine: {r['machine']}.",
        "",
    ]
    return "\n".join(out)


def _goals(r: dict[str, Any]) -> str:
    rows = {x["scenario"]: x for x in r["rows"]}
    fa = rows["none"]["shipyard"]
    power = rows["mean +0.25 sd"]["shipyard"]
    speed = r["ingest"]["actor_rows_per_s"]
    met = [fa <= 0.01, power >= 0.95, speed >= 200_000]
    return (
        f"Goals: false alarms <= 1% ({_pct(fa)}, {'met' if met[0] else 'NOT met'}); power >= 95% "
        f"at 0.25 sd ({_pct(power)}, {'met' if met[1] else 'NOT met'}); >= 200,000 rows/s per "
        f"actor ({speed:,.0f}, {'met' if met[2] else 'NOT met'})."
    )


if __name__ == "__main__":
    main()
