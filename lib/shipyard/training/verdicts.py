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
        gaps = "  ".join(
            f"{gap.replace('_difference', '')} {g['value']:.3f} "
            f"[{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"
            + (f" {g['verdict']}" if "verdict" in g else "")
            for gap, g in col["gaps"].items()
        )
        lines.append(
            f"fairness on {col['column']} ({len(col['gapped_groups'])} groups): {gaps or col.get('note', '')}"
        )
    return lines


def target_line(target: dict[str, Any]) -> str:
    """`target late (binary): positive class 'yes' of ['no', 'yes']`."""
    head = f"target {target['column']} ({target['task']})"
    if target["task"] == "binary":
        return f"{head}: positive class {target['positive_class']!r} of {target['classes']}"
    if target["task"] == "multiclass":
        return f"{head}: classes in output order {target['classes']}"
    return head
