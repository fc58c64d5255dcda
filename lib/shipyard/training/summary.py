"""What a training run reports: `TrainReport` and the job's result line (`shipyard.contract`),
with the target, the slice gate and the fairness gaps summed up for a person and a submitter."""

from __future__ import annotations

import dataclasses
from typing import Any

from shipyard.bundle.schema import InputSchema
from shipyard.training import slices as sl


@dataclasses.dataclass
class TrainReport:
    run_id: str
    registered_version: int | None
    aliases: list[str]
    gate_failures: list[str]
    evaluation: dict[str, Any]

    def summary(self, model: str) -> dict[str, Any]:
        """The job's result line: what submitters read (see `shipyard.contract`)."""
        e = self.evaluation
        return {
            "run_id": self.run_id,
            "model": model,
            "registered_version": self.registered_version,
            "aliases": self.aliases,
            "gate_failures": self.gate_failures,
            "target": e["target"],
            "metrics": e["metrics"],
            "baseline": e["baseline"],
            "onnx_latency": e["onnx"]["latency"],
            "onnx_parity": e["onnx"]["parity"],
            "slices": slice_summary(e["slices"]),
            "fairness": fairness_summary(e.get("fairness")),
            "training": {
                k: e["training"][k]
                for k in (
                    "num_workers",
                    "rounds",
                    "best_iteration",
                    "resumed_from_round",
                    "checkpoint",
                )
            },
        }


def target_summary(schema: InputSchema) -> dict[str, Any]:
    """The target as the model encodes it: its classes in index order and, for a binary model,
    the positive class (what `probabilities`, AUC, F1 and fairness are about)."""
    out: dict[str, Any] = {"column": schema.target, "task": schema.task}
    if schema.task != "regression":
        out["classes"] = list(schema.classes)
    if schema.task == "binary":
        out["positive_class"] = schema.classes[1]
    return out


def slice_summary(report: dict[str, Any], shown: int = 3) -> dict[str, Any]:
    """The slice gate in the result line: counts and the worst slices with their intervals."""
    return {
        "tested": report["tested"],
        "untested": report["untested"],
        "failed": report["failed"],
        "worst": [sl.describe(r, report["metric"]) for r in report["slices"][:shown]],
    }


def fairness_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """Each sensitive column's gaps with their intervals (and verdict, where gated)."""
    if not report:
        return None
    return {
        col["column"]: {
            name: {
                k: gap[k]
                for k in ("value", "ci95", "bound", "verdict", "reason", "left_out")
                if k in gap
            }
            for name, gap in col["gaps"].items()
        }
        for col in report["columns"]
    }
