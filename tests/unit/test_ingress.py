"""The serving app's direct-ingress URLs, read from Serve's instance details (the REST answer)."""

from typing import Any

from shipyard.compute.ingress import ingress_urls


def details(host: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {"http_options": {"host": host, "port": 8000}, "target_groups": groups}


def group(app: str, protocol: str, ports: list[int], prefix: str = "/") -> dict[str, Any]:
    targets = [{"ip": "10.0.0.7", "port": p, "instance_id": "", "name": f"r{p}"} for p in ports]
    return {"targets": targets, "route_prefix": prefix, "protocol": protocol, "app_name": app}


def test_one_url_per_router_replica_of_the_app_on_http_only() -> None:
    d = details("0.0.0.0", [
        group("shipyard", "HTTP", [30001, 30000]),
        group("shipyard", "gRPC", [40000]),
        group("other", "HTTP", [30002]),
    ])  # fmt: skip
    assert ingress_urls(d, "shipyard") == ["http://10.0.0.7:30000", "http://10.0.0.7:30001"]


def test_a_bound_host_is_where_the_replica_listens() -> None:
    """Serve binds the replicas' ports to http_options.host: 127.0.0.1 on a laptop is reachable
    there, not at the node's address."""
    d = details("127.0.0.1", [group("shipyard", "HTTP", [30000], prefix="/api/")])
    assert ingress_urls(d, "shipyard") == ["http://127.0.0.1:30000/api"]


def test_no_app_or_no_direct_ingress_is_no_url() -> None:
    assert ingress_urls(details("0.0.0.0", []), "shipyard") == []
    assert ingress_urls({"applications": {}}, "shipyard") == []


def test_the_controllers_own_dict_names_the_protocol_by_enum() -> None:
    """In-process (the benchmark asks Serve's controller), the protocol is Serve's enum."""
    from ray.serve._private.common import RequestProtocol

    d = details("127.0.0.1", [group("shipyard", "HTTP", [30000])])
    d["target_groups"][0]["protocol"] = RequestProtocol.HTTP
    assert ingress_urls(d, "shipyard") == ["http://127.0.0.1:30000"]
