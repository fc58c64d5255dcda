"""Evidently's verdicts on the drift benchmark's windows, run in its own virtualenv.

Evidently 0.7.23 (the newest) does not import with pandas 3, which Shipyard uses, so `make
bench` installs it into `.venv-bench` (benchmarks/requirements-bench.lock) and runs this file
there: `python drift_evidently.py DIR` reads DIR/reference.parquet and DIR/windows.parquet
(a `window` column plus the features) and writes DIR/evidently.jsonl, one line per window with
the columns Evidently's DataDriftPreset (defaults) flags and the seconds it took. Imports
nothing from Shipyard.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset


def drifted(value: float, method: str, threshold: float) -> bool:
    """Evidently's own rule: a p-value below the threshold, or a distance at or above it."""
    if "p_value" in method.lower() or "test" in method.lower():
        return value < threshold
    return value >= threshold


def main(folder: Path) -> None:
    ref = pd.read_parquet(folder / "reference.parquet")
    windows = pd.read_parquet(folder / "windows.parquet")
    numeric = [c for c in ref.columns if pd.api.types.is_numeric_dtype(ref[c])]
    categorical = [c for c in ref.columns if c not in numeric]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    reference = Dataset.from_pandas(ref, data_definition=definition)
    report = Report([DataDriftPreset()])
    with open(folder / "evidently.jsonl", "w") as out:
        for wid, frame in windows.groupby("window", sort=True):
            t0 = time.perf_counter()
            current = Dataset.from_pandas(frame[ref.columns], data_definition=definition)
            snap = report.run(current_data=current, reference_data=reference)
            flagged = [
                m["config"]["column"]
                for m in snap.dict()["metrics"]
                if m["config"].get("type", "").endswith("ValueDrift")
                and m["value"] is not None
                and drifted(float(m["value"]), m["config"]["method"], m["config"]["threshold"])
            ]
            seconds = time.perf_counter() - t0
            out.write(json.dumps({"window": int(str(wid)), "drifted": flagged, "seconds": seconds}))
            out.write("\n")
            out.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
