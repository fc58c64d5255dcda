"""Bad configs and bad data: a clear error naming the key or column, a non-zero exit, and an
unchanged registry. One test per case, each a real `python -m jobs.train` on the test cluster.

One case per stage that can refuse the data (the column plan, the class check after the Ray
Data pass, an empty read, no files); every message of the column plan is unit-tested in
tests/unit/test_dataspec.py, where it costs nothing."""

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shipyard import datagen
from tests.conftest import run_job, write_config


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


def one_class(tmp: Path, good: str) -> dict:
    df = datagen.generate(400)
    df["churned"] = 0
    return {"data": {"path": _data(tmp, "one", df)}}


def empty(tmp: Path, good: str) -> dict:
    return {"data": {"path": _data(tmp, "empty", datagen.generate(100).iloc[:0])}}


CASES: dict[str, tuple[Any, str]] = {
    "missing-target": (lambda t, g: {"data": {"target": "renewed"}}, "data.target: column 'renewed' is not in the data"),
    "one-class-target": (one_class, "has a single class [0]"),
    "empty-data": (empty, "hold no rows"),
    "path-matches-nothing": (lambda t, g: {"data": {"path": str(t / "nowhere" / "*.parquet")}}, "matches no parquet or CSV files"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data(
    case: str, tmp_path: Path, cluster: Any, dataset: Path, job_env: dict, registry: Any
) -> None:
    make, message = CASES[case]
    overrides = make(tmp_path, str(dataset))
    cfg = write_config(tmp_path / "c.yaml", str(dataset / "*.parquet"), **overrides)
    before = snapshot(registry)
    proc = run_job(cluster, job_env, ["--config", str(cfg)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(registry) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {name: m}\ndata: [unclosed\n", "is not valid YAML at line"),
        (
            "model: {name: m}\ndata: {path: x, target: y, task: binary}\ntrain: {num_workers: two}\n",
            "train.num_workers: Input should be a valid integer",
        ),
    ],
    ids=["malformed-yaml", "wrong-type"],
)
def test_bad_config(
    text: str, message: str, tmp_path: Path, cluster: Any, job_env: dict, registry: Any
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    before = snapshot(registry)
    proc = run_job(cluster, job_env, ["--config", str(cfg)])
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(registry) == before
