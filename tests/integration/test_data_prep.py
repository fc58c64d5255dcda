"""Ray Data loading on CSV with an explicit categorical list, against the test cluster."""

from pathlib import Path
from typing import Any

import pytest
import ray

from shipyard.config.jobs import DataSection
from shipyard.demo import datagen


@pytest.fixture
def connected(cluster: Any, session_jobs: dict[str, Any]) -> Any:
    """A driver on the session's cluster (whose background jobs start now, beside this test)."""
    ray.init(address=cluster.gcs_address, log_to_driver=False)
    yield
    ray.shutdown()  # disconnects this driver; the session's cluster keeps running


def test_csv_random_split_and_fitted_preprocessing(connected: Any, tmp_path: Path) -> None:
    from shipyard.training.data import prepare

    datagen.write_dataset(tmp_path / "csv", 3000, seed=5, files=2, fmt="csv")
    cfg = DataSection(
        path=str(tmp_path / "csv"), target="churned", task="binary",
        categorical=["country", "device", "plan", "channel"], drop=["customer_id", "ts"],
        holdout=0.2, max_categories=3,
    )  # fmt: skip
    prep = prepare(cfg)
    assert sum(prep.rows.values()) == 3000
    assert prep.rows["holdout"] == pytest.approx(600, abs=60)
    country = prep.schema.feature("country")
    assert len(country.categories) == 3  # max_categories keeps the most frequent
    assert country.categories[0] == "US"
    assert prep.profile.rows == prep.rows["train"]  # fitted on the training split only
    assert prep.fingerprint["mode"] == "content" and len(prep.fingerprint["files"]) == 2
    again = prepare(cfg)
    assert again.fingerprint["sha256"] == prep.fingerprint["sha256"]
    assert again.rows == prep.rows


def test_worker_shards_keep_every_row_and_refuse_more_workers_than_rows(connected: Any) -> None:
    from shipyard.errors import DataValidationError
    from shipyard.training import fit

    ds = ray.data.range(10).materialize()
    frames = [fit.shard_frame(refs) for refs in fit.shards(ds, 3, "train")]
    assert [len(f) for f in frames] == [3, 3, 4]
    assert sorted(v for f in frames for v in f["id"]) == list(range(10))
    with pytest.raises(DataValidationError, match="train.num_workers=2"):
        fit.shards(ray.data.range(1).materialize(), 2, "valid")
