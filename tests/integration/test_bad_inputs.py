"""Bad configs and bad data: a clear error naming the key or column, a non-zero exit, and an
unchanged registry. One test per case, each a real `python -m jobs.train` on the test cluster.

One case per stage that can refuse the data (the column plan, the class check after the Ray
Data pass, an empty read, no files); every message of the column plan is unit-tested in
tests/unit/test_dataspec.py, where it costs nothing."""

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shipyard import contract
from shipyard.demo import datagen
from tests.conftest import run_jobs, write_config


def snapshot(registry: Any) -> list[tuple[str, str, dict[str, str]]]:
    return sorted(
        (mv.name, mv.version, dict(registry.client.get_registered_model(mv.name).aliases))
        for mv in registry.client.search_model_versions("")
    )


def _data(tmp: Path, name: str, df: pd.DataFrame) -> str:
    d = tmp / name
    d.mkdir()
    df.to_parquet(d / "part-0.parquet", index=False)
    return str(d)


def one_class(tmp: Path, good: str) -> dict[str, Any]:
    df = datagen.generate(400)
    df["churned"] = 0
    return {"data": {"path": _data(tmp, "one", df)}}


def empty(tmp: Path, good: str) -> dict[str, Any]:
    return {"data": {"path": _data(tmp, "empty", datagen.generate(100).iloc[:0])}}


CASES: dict[str, tuple[Any, str]] = {
    "missing-target": (lambda t, g: {"data": {"target": "renewed"}}, "data.target: column 'renewed' is not in the data"),
    "one-class-target": (one_class, "has a single class [0]"),
    "empty-data": (empty, "hold no rows"),
    "path-matches-nothing": (lambda t, g: {"data": {"path": str(t / "nowhere" / "*.parquet")}}, "matches no parquet or CSV files"),
}  # fmt: skip


CONFIGS = {
    "malformed-yaml": ("model: {name: m}\ndata: [unclosed\n", "is not valid YAML at line"),
    "wrong-type": (
        "model: {name: m}\ndata: {path: x, target: y, task: binary}\ntrain: {num_workers: two}\n",
        "train.num_workers: Input should be a valid integer",
    ),
}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, cluster: Any, dataset: Path, job_env: dict[str, str],
    registry: Any,
) -> dict[str, Any]:  # fmt: skip
    """Every case's job at once (each is a real driver on the test cluster); the registry is
    snapshotted before the first starts and after the last ends."""
    jobs = {}
    for case, (make, _) in CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        cfg = write_config(tmp / "c.yaml", str(dataset / "*.parquet"), **make(tmp, str(dataset)))
        jobs[case] = ["--config", str(cfg)]
    for case, (text, _) in CONFIGS.items():
        cfg = tmp_path_factory.mktemp(case) / "bad.yaml"
        cfg.write_text(text)
        jobs[case] = ["--config", str(cfg)]
    before = snapshot(registry)
    procs = run_jobs(cluster, job_env, jobs)
    return {"procs": procs, "before": before, "after": snapshot(registry)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data(case: str, runs: dict[str, Any]) -> None:
    proc = runs["procs"][case]
    assert proc.returncode == contract.EXIT_INVALID, proc.stderr[-3000:]
    assert CASES[case][1] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert runs["after"] == runs["before"]


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config(case: str, runs: dict[str, Any]) -> None:
    proc = runs["procs"][case]
    assert proc.returncode == contract.EXIT_INVALID
    assert CONFIGS[case][1] in proc.stderr and "Traceback" not in proc.stderr
    assert runs["after"] == runs["before"]
