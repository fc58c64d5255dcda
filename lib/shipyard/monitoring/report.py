"""A self-contained HTML drift report for one variant: a verdict table for every feature and,
for the drifted ones, reference vs current histograms (inline SVG, no scripts, no network)."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

BAR_W, CHART_H = 26, 120


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def histogram_svg(bins: list[str], reference: list[float], current: list[float]) -> str:
    """Side-by-side bars per bin: reference (grey) and current window (orange)."""
    top = max([*reference, *current, 1e-9])
    width = len(bins) * (2 * BAR_W + 12) + 20
    parts = [f'<svg width="{width}" height="{CHART_H + 70}" role="img">']
    for i, (label, r, c) in enumerate(zip(bins, reference, current, strict=True)):
        x = 10 + i * (2 * BAR_W + 12)
        for j, (v, color) in enumerate(((r, "#9e9e9e"), (c, "#e6711c"))):
            h = CHART_H * v / top
            parts.append(
                f'<rect x="{x + j * BAR_W}" y="{CHART_H - h + 10:.1f}" width="{BAR_W - 2}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(label)}: '
                f"{'reference' if j == 0 else 'current'} {v:.3f}</title></rect>"
            )
        parts.append(
            f'<text x="{x + BAR_W}" y="{CHART_H + 26}" font-size="10" text-anchor="middle" '
            f'transform="rotate(30 {x + BAR_W} {CHART_H + 26})">{html.escape(label[:18])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict[str, Any]) -> str:
    st = data["status"]
    feats: dict[str, Any] = st.get("features", {})
    title = f"Drift: {st['model']} v{st['model_version']} ({st['variant']})"
    rows = []
    for name, f in sorted(feats.items(), key=lambda kv: (not kv[1]["drifted"], kv[0])):
        flag = "DRIFTED" if f["drifted"] else "ok"
        rows.append(
            f"<tr class='{'bad' if f['drifted'] else ''}'><td>{html.escape(name)}</td>"
            f"<td>{flag}</td><td>{_fmt(f['psi'])}</td><td>{_fmt(f['js'])}</td>"
            f"<td>{_fmt(f['p_adjusted'])}</td><td>{html.escape(', '.join(f['quality_flags']))}</td>"
            f"<td>{_fmt(f['window_rows'])}</td><td>{_when(f['since'])}</td></tr>"
        )
    charts = []
    for name, f in sorted(feats.items()):
        if not f["drifted"] or name not in data["histograms"]:
            continue
        h = data["histograms"][name]
        charts.append(
            f"<h3>{html.escape(name)}</h3>" + histogram_svg(h["bins"], h["reference"], h["current"])
        )
    last = st.get("last_window") or {}
    verdict = "drifted" if st.get("drifted") else "no drift"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
tr.bad{{background:#fde3d3}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Overall: <b>{verdict}</b>{" (" + html.escape(", ".join(st.get("drifting", []))) + ")" if st.get("drifting") else ""}.
Last window: #{_fmt(last.get("window"))}, {_fmt(last.get("rows"))} rows,
{_when(last.get("started_at"))} to {_when(last.get("ended_at"))}. Rows counted: {_fmt(st.get("rows"))}.
Settings: {html.escape(str(st.get("settings", {})))}.</p>
<table><tr><th>feature</th><th>verdict</th><th>PSI</th><th>JS distance</th><th>p (adjusted)</th>
<th>quality</th><th>window rows</th><th>drifting since</th></tr>
{"".join(rows) or "<tr><td colspan=8>no window closed yet</td></tr>"}</table>
<h2>Drifted features: reference (grey) vs last window (orange)</h2>
{"".join(charts) or "<p>none</p>"}
</body></html>
"""
