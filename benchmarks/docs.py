"""`make docs`: refresh the generated parts of the docs: the config references in docs/, the
benchmark tables in docs/benchmarks.md and the ratios table on the README's front page, all from
what the code and `benchmarks/results/*.json|md` hold."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shipyard.config.jobs import CurveSection, SearchParam, TuneSection, reference_markdown
from shipyard.config.serving import ServingConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLES = ("foundation", "serving", "tuning", "drift")


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)


def _ms(v: float) -> str:
    return f"{v:,.2f} ms" if v < 100 else f"{v:,.0f} ms"


def ratios(results: dict[str, dict[str, Any]]) -> str:
    """One row per path: Shipyard, its baseline in the same run, the ratio and the goal."""
    rows: list[tuple[str, str, str, float, str]] = []
    if f := results.get("foundation"):
        t, n = f["training"], f["rows"]
        rows += [
            (f"load + train {n:,} rows: Ray Data + Ray Train (1 worker) vs pyarrow + xgboost.train",
             f"{t['ray_1w_s']:.1f} s", f"{t['bare_s']:.1f} s", t["ray_1w_s"] / t["bare_s"], "<= 1.3"),
            ("one raw record -> prediction: the ONNX graph vs booster.inplace_predict (encoded)",
             f"{f['single_row']['onnx_us']:.0f} µs", f"{f['single_row']['native_us']:.0f} µs",
             f["single_row"]["onnx_us"] / f["single_row"]["native_us"], "<= 50 µs"),
        ]  # fmt: skip
    if s := results.get("serving"):
        ship, minimal = s["throughput"]["shipyard"], s["throughput"]["minimal"]
        rows += [
            ("serving p50, single records: Shipyard vs a minimal Serve app (throughput-optimised Serve)",
             _ms(ship["p50_ms"]), _ms(minimal["p50_ms"]), ship["p50_ms"] / minimal["p50_ms"], "<= 1.25"),
            ("serving requests/s, the same",
             f"{ship['rps']:.0f}/s", f"{minimal['rps']:.0f}/s", ship["rps"] / minimal["rps"], ">= 0.8"),
            ("serving p50, single records: Shipyard vs bare FastAPI + ONNX Runtime",
             _ms(ship["p50_ms"]), _ms(s["bare"]["p50_ms"]), ship["p50_ms"] / s["bare"]["p50_ms"], "—"),
        ]  # fmt: skip
    if u := results.get("tuning"):
        rows.append(
            (f"tuning {u['trials']} trials: ASHA vs full random search, boosting rounds "
             f"(best AUC gap {u['asha_auc_gap']:+.4f})",
             f"{u['asha']['rounds']:,}", f"{u['full']['rounds']:,}", u["asha_rounds_ratio"],
             "<= 0.5, AUC within 0.002")
        )  # fmt: skip
    if d := results.get("drift"):
        none = next(r for r in d["rows"] if r["scenario"] == "none")
        ship_ms, evid_ms = none["shipyard_ms_per_window"], none["evidently_ms_per_window"]
        rows.append(
            (f"drift, one {d['window']:,}-row window of {d['features']} features: Shipyard vs Evidently",
             _ms(ship_ms), _ms(evid_ms), ship_ms / evid_ms, "—")
        )  # fmt: skip
    lines = ["| path | Shipyard | baseline | ratio | goal |", "|---|---|---|---|---|"]
    lines += [f"| {p} | {a} | {b} | {r:.2f} | {g} |" if r >= 0.1 else f"| {p} | {a} | {b} | {r:.2g} | {g} |"
              for p, a, b, r, g in rows]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    docs = ROOT / "docs"
    tables = [p.read_text() for p in (RESULTS / f"{n}.md" for n in TABLES) if p.exists()]
    results = {
        n: json.loads(p.read_text()) for n in TABLES if (p := RESULTS / f"{n}.json").exists()
    }
    for path, blocks in {
        docs / "training.md": {"config-reference": reference_markdown()},
        docs / "serving.md": {"serving-reference": reference_markdown(ServingConfig)},
        docs / "cluster.md": {
            "tune-reference": reference_markdown(TuneSection, "tune."),
            "curve-reference": reference_markdown(CurveSection, "curve."),
            "search-param-reference": reference_markdown(SearchParam, "tune.space.NAME."),
        },
        docs / "benchmarks.md": {"bench": "\n".join(tables)} if tables else {},
        ROOT / "README.md": {"bench-ratios": ratios(results)} if results else {},
    }.items():
        text = path.read_text()
        for name, body in blocks.items():
            text = replace_block(text, name, body)
        path.write_text(text)


if __name__ == "__main__":
    main()
