"""The slice gate and the fairness gaps of an evaluation as a person reads them: what the job
prints and `make demo` shows (evaluation.json holds every slice and group)."""

from __future__ import annotations

from typing import Any

from shipyard.training.slices import describe


def verdict_lines(evaluation: dict[str, Any], shown: int = 3) -> list[str]:
    sl, name = evaluation["slices"], evaluation["primary_metric"]
    lines = [target_line(evaluation["target"])] if "target" in evaluation else []
    lines += [
        f"slices: {sl['tested']} tested ({sl['correction']}, alpha {sl['alpha']}, bound "
        f"{sl['max_gap']} {sl['gap_is']}), {sl['failed']} failed, {sl['untested']} too small "
        "to test; worst:"
    ]
    lines += [f"  {describe(r, name)}" for r in sl["slices"][:shown]]
    for col in (evaluation.get("fairness") or {}).get("columns", []):
        gaps = "  ".join(gap_text(name, g) for name, g in col["gaps"].items())
        lines.append(
            f"fairness on {col['column']} ({len(col['gapped_groups'])} groups, threshold "
            f"{col['threshold']:g}): {gaps or col.get('note', '')}"
        )
    return lines


def gap_text(name: str, g: dict[str, Any]) -> str:
    """`demographic_parity 0.031 [0.012, 0.050] passes`, or why it cannot be told."""
    short = name.replace("_difference", "")
    if g["value"] is None:
        return f"{short} not estimable ({g['reason']})"
    text = f"{short} {g['value']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"
    text += f" {g['verdict']}" if "verdict" in g else ""
    return text + (f" (left out: {', '.join(g['left_out'])})" if g.get("left_out") else "")


def target_line(target: dict[str, Any]) -> str:
    """`target late (binary): positive class 'yes' of ['no', 'yes']`."""
    head = f"target {target['column']} ({target['task']})"
    if target["task"] == "binary":
        return f"{head}: positive class {target['positive_class']!r} of {target['classes']}"
    if target["task"] == "multiclass":
        return f"{head}: classes in output order {target['classes']}"
    return head
