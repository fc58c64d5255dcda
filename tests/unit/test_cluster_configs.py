"""Offline validation of everything in cluster/: Ray's own config checks, botocore's EC2 shapes,
KubeRay manifests through Ray's own KubeRay translation, the Serve config through Serve's schema."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.compute.localcluster import autoscaling_config
from shipyard.compute.spot import CAPACITY_LABEL, spot_types

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
CLOUDS = ["aws.yaml", "gcp.yaml"]


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CLUSTER / name).read_text()))


@pytest.mark.parametrize("name", CLOUDS)
def test_ray_accepts_the_cloud_configs(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(load(name)))
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # the head schedules no work
    assert head["max_workers"] == 0
    workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())  # scales from zero
    assert cfg["idle_timeout_minutes"] > 0
    assert set(spot_types(cfg)) == {"cpu-spot", "gpu-spot"}
    # Spot first, an on-demand fallback of the same shape below it.
    assert types["cpu-spot"]["priority"] > types["cpu-ondemand"]["priority"]
    assert types["cpu-spot"]["resources"] == types["cpu-ondemand"]["resources"]
    assert types["cpu-ondemand"]["labels"][CAPACITY_LABEL] == "on-demand"
    assert types["gpu-spot"]["resources"]["GPU"] >= 1
    # Pinned image, dashboard on loopback, fallback on the head, watcher on the workers.
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")
    assert types["gpu-spot"]["docker"]["worker_image"].startswith("rayproject/ray:2.60.0-py311-gpu")
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds and "--num-cpus=0" in head_cmds
    assert "shipyard.compute.spot fallback" in head_cmds
    assert "shipyard.compute.spot watch" in " ".join(cfg["worker_start_ray_commands"])
    assert any("requirements.lock" in c for c in cfg["setup_commands"])


def test_ray_rejects_a_broken_config() -> None:
    """The check above can fail: a misspelt key is refused by the same validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load("aws.yaml")
    cfg["available_node_types"]["cpu-spot"]["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(cfg))


def test_aws_node_configs_match_ec2_run_instances() -> None:
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    cfg = load("aws.yaml")
    for name, t in cfg["available_node_types"].items():
        params = {
            **t["node_config"],
            "MinCount": 1,
            "MaxCount": 1,
            "ImageId": "ami-0123456789abcdef0",
        }
        validate_parameters(params, shape)  # raises naming the bad field
        if t.get("labels", {}).get(CAPACITY_LABEL) == "spot":
            assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    bad = {**cfg["available_node_types"]["cpu-spot"]["node_config"], "MinCount": 1, "MaxCount": 1}
    bad["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": 1}}
    with pytest.raises(ParamValidationError, match="SpotInstanceType"):
        validate_parameters(bad, shape)


def test_gcp_spot_is_a_scheduling_mapping() -> None:
    cfg = load("gcp.yaml")
    for name in ("cpu-spot", "gpu-spot"):
        scheduling = cfg["available_node_types"][name]["node_config"]["scheduling"]
        assert isinstance(scheduling, dict), f"{name}: scheduling must be a mapping, not a list"
        assert scheduling["provisioningModel"] == "SPOT"
        assert scheduling["instanceTerminationAction"] == "DELETE"
        assert scheduling["automaticRestart"] is False
    assert "scheduling" not in cfg["available_node_types"]["cpu-ondemand"]["node_config"]


def test_kuberay_cluster_translates_to_spot_and_on_demand_node_types() -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _generate_available_node_types_from_ray_cr_spec,
    )

    cr = load("kuberay/raycluster.yaml")
    assert cr["kind"] == "RayCluster" and cr["spec"]["rayVersion"] == "2.60.0"
    assert cr["spec"]["enableInTreeAutoscaling"] is True
    assert cr["spec"]["autoscalerOptions"]["version"] == "v2"
    env = {e["name"]: e["value"] for e in cr["spec"]["autoscalerOptions"]["env"]}
    assert int(env["RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"]) <= 120
    assert cr["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    types = _generate_available_node_types_from_ray_cr_spec(cr["spec"])
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["cpu-spot"]["labels"] == {CAPACITY_LABEL: "spot"}
    assert types["cpu-spot"]["priority"] > types["cpu-ondemand"]["priority"]
    assert types["cpu-spot"]["resources"] == types["cpu-ondemand"]["resources"]
    assert types["gpu-spot"]["resources"]["GPU"] == 1
    assert all(t["min_workers"] == 0 for n, t in types.items() if n != "headgroup")
    spot_groups = [
        g for g in cr["spec"]["workerGroupSpecs"] if g["labels"][CAPACITY_LABEL] == "spot"
    ]
    for g in spot_groups:  # the preStop hook drains with reason PREEMPTION
        hook = g["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:4] == ["python", "-m", "shipyard.compute.spot", "drain-self"]


def test_kuberay_job_and_service() -> None:
    from ray.serve.schema import ServeDeploySchema

    job = load("kuberay/rayjob-train.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("python -m jobs.train")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "shipyard"}
    svc = load("kuberay/rayservice.yaml")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    # The RayService serves exactly serving/config.yaml: one source of truth.
    assert serve_cfg == yaml.safe_load((CLUSTER.parent / "serving" / "config.yaml").read_text())


def test_the_local_cluster_config_passes_ray_validation() -> None:
    from ray.autoscaler._private.util import validate_config

    cfg = autoscaling_config("127.0.0.1:6379", Path("/tmp/outage"))
    validate_config(cfg)
    assert spot_types(cfg) == ["cpu-spot"]
    assert cfg["provider"]["module"] == "shipyard.compute.localcluster.LocalSpotProvider"


def test_the_iam_policies_the_aws_config_names_exist() -> None:
    import json

    policies = json.loads((CLUSTER / "aws-iam.json").read_text())
    head_actions = set()
    for statement in policies["head"]["Statement"]:
        actions = statement["Action"]
        head_actions |= set(actions if isinstance(actions, list) else [actions])
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"} <= head_actions
    assert any("s3:GetObject" in st["Action"] for st in policies["worker"]["Statement"])
    profiles = {
        t["node_config"]["IamInstanceProfile"]["Name"]
        for t in load("aws.yaml")["available_node_types"].values()
    }
    assert profiles == {"shipyard-ray-head", "shipyard-ray-worker"}


def _env_values(node: Any, name: str) -> list[str]:
    """Every `{name: NAME, value: V}` in a Kubernetes manifest."""
    if isinstance(node, dict):
        found = [str(node["value"])] if node.get("name") == name and "value" in node else []
        return found + [v for child in node.values() for v in _env_values(child, name)]
    if isinstance(node, list):
        return [v for child in node for v in _env_values(child, name)]
    return []


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml",
                                  "kuberay/rayservice.yaml"])  # fmt: skip
def test_serving_state_is_on_object_storage_on_every_cluster(name: str) -> None:
    """Any node may take the experiment store over: its state cannot be on one node's disk."""
    import re

    text = (CLUSTER / name).read_text()
    if name.startswith("kuberay/"):
        uris = [
            v for doc in yaml.safe_load_all(text) for v in _env_values(doc, "SHIPYARD_STATE_URI")
        ]
    else:
        uris = re.findall(r"--env SHIPYARD_STATE_URI=(\S+)", text)
    assert uris, f"{name} sets no SHIPYARD_STATE_URI"
    assert all(re.fullmatch(r"(s3|gs)://[A-Za-z0-9-]+/serving", u) for u in uris), uris


def _labels(node: Any) -> list[dict[str, str]]:
    """Every `labels:` mapping of a node type or worker group (Ray's node labels)."""
    if isinstance(node, dict):
        here = [node["labels"]] if isinstance(node.get("labels"), dict) else []
        return here + [x for child in node.values() for x in _labels(child)]
    if isinstance(node, list):
        return [x for child in node for x in _labels(child)]
    return []


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml",
                                  "kuberay/rayservice.yaml"])  # fmt: skip
def test_serving_state_runs_on_on_demand_nodes_on_every_cluster(name: str) -> None:
    """The router, store, drift actors and retrain coordinator ask for on-demand nodes
    (SHIPYARD_SERVING_NODES), and every cluster has a node type carrying that label."""
    import re

    text = (CLUSTER / name).read_text()
    docs = list(yaml.safe_load_all(text))
    if name.startswith("kuberay/"):
        values = [v for doc in docs for v in _env_values(doc, "SHIPYARD_SERVING_NODES")]
    else:
        values = re.findall(r"--env SHIPYARD_SERVING_NODES=(\S+)", text)
    assert values and set(values) == {"shipyard.io/capacity=on-demand"}, values
    labels = [x for doc in docs for x in _labels(doc)]
    assert {"shipyard.io/capacity": "on-demand"} in labels, labels
