"""The variants file, the Serve config file and request validation against the input schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shipyard.bundle.schema import Feature, InputSchema
from shipyard.config.serving import TrafficUpdate, load_serving_args, parse_serving_config
from shipyard.errors import ConfigError, InvalidInput

REPO = Path(__file__).resolve().parents[2]
GOOD = {"model": "m", "variants": [{"name": "a", "version": "champion", "weight": 1}]}


def test_serve_config_file_passes_rays_schema_and_ours() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    deploy = ServeDeploySchema.model_validate(raw)
    app = deploy.applications[0]
    assert app.import_path == "serving.app:build_app"
    cfg = parse_serving_config(app.args, source="serving/config.yaml")
    router = next(d for d in app.deployments if d.name == "router")
    traffic = TrafficUpdate.model_validate(router.user_config)
    assert set(traffic.weights) <= {v.name for v in cfg.variants}
    assert traffic.weights == {v.name: v.weight for v in cfg.variants}  # same initial traffic


def test_variants_file_loads_as_builder_args() -> None:
    cfg = load_serving_args({"config": str(REPO / "serving" / "variants.yaml")})
    assert cfg.control_name == "control" and cfg.traffic()["weights"]["treatment"] == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": []}, "variants"),
        ({"variants": [{"name": "a", "version": 1, "weight": 0}]}, "weight > 0"),
        ({"variants": [{"name": "a", "version": 1, "weight": 1}] * 2}, "unique"),
        ({"variants": [{"name": "a", "version": 1, "weight": 1, "shadow": 5}]}, "shadow"),
        ({"variants": [{"name": "Bad Name", "version": 1, "weight": 1}]}, "variants.0.name"),
        ({"control": "zz"}, "control"),
        ({"colour": "red"}, "colour"),
        ({"guardrails": {"max_p99_ratio": 0}}, "guardrails.max_p99_ratio"),
        ({"variants": [{"name": "a", "version": 1, "weight": 1, "autoscaling": {"min_replicas": 3, "max_replicas": 1}}]}, "max_replicas"),
    ],
)  # fmt: skip
def test_bad_variants_files_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_serving_config({**GOOD, **change})


def test_args_take_a_file_or_the_structure() -> None:
    with pytest.raises(ConfigError, match="either config=FILE"):
        load_serving_args({"config": "x.yaml", "model": "m"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_serving_args({"config": "/nope/x.yaml"})


SCHEMA = InputSchema(
    task="binary",
    target="y",
    features=(Feature("age", "numeric"), Feature("country", "categorical", ("DE", "FR"))),
    classes=(0, 1),
    time_column="ts",
    dropped=("id",),
)


def test_records_become_the_same_feed_as_frames() -> None:
    import pandas as pd

    records = [
        {"age": 30, "country": "DE"},
        {"age": None, "country": None, "id": 7, "ts": "2026-01-01", "y": 1},
        {"age": 1.5, "country": "XX"},
    ]
    feed = SCHEMA.validate_records(records)
    ref = SCHEMA.onnx_feed(pd.DataFrame(records))
    assert np.array_equal(feed["age"], ref["age"], equal_nan=True)
    assert feed["country"].ravel().tolist() == ref["country"].ravel().tolist()
    assert np.array_equal(
        SCHEMA.encode_feed(feed), SCHEMA.encode(pd.DataFrame(records)), equal_nan=True
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"age": 1}, r"missing field\(s\) \['country'\]"),
        ({"age": 1, "country": "DE", "colour": "red"}, "unknown field 'colour'"),
        ({"age": "1", "country": "DE"}, "age must be a number"),
        ({"age": True, "country": "DE"}, "age must be a number"),
        ({"age": 1, "country": 2.5}, "country must be a string"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_records_name_the_field(record: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SCHEMA.validate_records([record])


def test_integer_categories_read_as_strings() -> None:
    assert SCHEMA.validate_records([{"age": 1, "country": 7}])["country"][0, 0] == "7"


def test_drift_section_maps_onto_the_statistics_settings() -> None:
    from shipyard.config.drift import DriftSettings
    from shipyard.config.serving import DriftSection

    assert set(DriftSettings.model_fields) <= set(DriftSection.model_fields)
    assert issubclass(DriftSection, DriftSettings)  # one definition of the statistics' fields
    s = DriftSection(window_rows=123, correction="bh", psi_threshold=0.05).settings()
    assert (s.window_rows, s.correction, s.psi_threshold) == (123, "bh", 0.05)
    assert DriftSection().settings() == DriftSettings()  # one set of defaults


def test_stateful_parts_go_where_the_placement_labels_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router, store, drift actors and retrain coordinator ask Serve for the labelled nodes:
    from the variants file, else $SHIPYARD_SERVING_NODES; what Ray's own schema accepts."""
    from ray.serve.schema import RayActorOptionsSchema

    from serving.app import placement

    args = {"model": "m", "variants": [{"name": "a", "version": 1, "weight": 1}]}
    monkeypatch.delenv("SHIPYARD_SERVING_NODES", raising=False)
    assert placement(parse_serving_config(args)) == {}  # a laptop: any node
    monkeypatch.setenv("SHIPYARD_SERVING_NODES", "shipyard.io/capacity=on-demand, zone=a")
    options = placement(parse_serving_config(args))
    assert options == {"label_selector": {"shipyard.io/capacity": "on-demand", "zone": "a"}}
    RayActorOptionsSchema(num_cpus=0, **options)  # Serve would take it
    own = parse_serving_config({**args, "placement": {"pool": "serving"}})
    assert placement(own) == {"label_selector": {"pool": "serving"}}  # the file wins
    monkeypatch.setenv("SHIPYARD_SERVING_NODES", "on-demand")
    with pytest.raises(ConfigError, match="SHIPYARD_SERVING_NODES='on-demand': expected key=value"):
        placement(parse_serving_config(args))
