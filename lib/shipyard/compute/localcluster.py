"""An autoscaling Ray cluster on one machine, with spot and on-demand node types that behave.

`make cluster-up` / `make cluster-down` (`python -m shipyard.compute.localcluster up|down|status|outage|
preempt`). The head has no CPUs (like the cloud configs, it schedules no work); worker nodes are
extra raylets that Ray's fake multi-node provider starts on this machine when the autoscaler (v2)
asks for them, and stops after their idle timeout. Two worker types, `cpu-spot` (preferred,
priority 10) and `cpu-ondemand` (fallback, priority 1), mirror `cluster/aws.yaml`:

- `outage on` makes every spot launch fail at once, as EC2 does with InsufficientInstanceCapacity;
  the head's `shipyard.compute.spot fallback` controller then puts on-demand first.
- `preempt NODE` does what a spot reclaim does: the node is drained with reason PREEMPTION (what
  `shipyard.compute.spot watch` does on a notice), then its processes are killed.

Ray 2.60's packaged `fake_multi_node/example.yaml` is missing, so `ray up` on the fake provider
fails; here the provider is an `external` module with a complete config, started by `ray start
--head --autoscaling-config`. Everything runs in one process group, stopped by its own id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# The provider class below is imported by the autoscaler, inside the cluster.
from ray.autoscaler._private.fake_multi_node.node_provider import (
    FAKE_HEAD_NODE_ID,
    FakeMultiNodeProvider,
)
from ray.autoscaler.node_launch_exception import NodeLaunchException

from shipyard.compute.localray import (
    LocalCluster,
    descendants,
    group_alive,
    proc_stat,
    ray_env,
    stop_group,
)
from shipyard.compute.spot import CAPACITY_LABEL

HEAD_TYPE = "ray.head.default"
NODE_MEMORY_BYTES = 2 * 1024**3


class LocalSpotProvider(FakeMultiNodeProvider):  # type: ignore[misc]
    """Ray's fake multi-node provider, plus spot capacity that can run out.

    While `provider.outage_file` exists, launching a node type labelled spot fails immediately with
    the error EC2 gives when a spot pool is empty; on-demand types launch as usual.
    """

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: Any,
        labels: Any,
    ) -> Any:
        outage = self.provider_config.get("outage_file")
        if (labels or {}).get(CAPACITY_LABEL) == "spot" and outage and Path(outage).exists():
            raise NodeLaunchException(
                "InsufficientInstanceCapacity",
                "There is no Spot capacity available that matches your request (simulated).",
                None,
            )
        # The node type declares its memory so that the autoscaler can place tasks that ask for
        # some (Ray Data's reads may); the fake node's raylet measures its own, as a VM's does,
        # and refuses `memory` among custom resources.
        resources = {k: v for k, v in resources.items() if k != "memory"}
        parent: Any = super()  # Ray's provider is untyped
        return parent.create_node_with_resources_and_labels(
            node_config, tags, count, resources, labels
        )


def worker_type(
    priority: int, capacity: str, cpus: int, max_workers: int, idle_s: float
) -> dict[str, Any]:
    return {
        # Memory as the autoscaler plans with it (below what a raylet on this machine measures):
        # a type without it cannot take a request for memory, and the request waits forever.
        "resources": {"CPU": cpus, "memory": NODE_MEMORY_BYTES},
        "node_config": {},
        "min_workers": 0,
        "max_workers": max_workers,
        "priority": priority,
        "idle_timeout_s": idle_s,
        "labels": {CAPACITY_LABEL: capacity},
    }


def autoscaling_config(
    gcs_address: str,
    outage_file: Path,
    cpus_per_node: int = 1,
    max_workers_per_type: int = 2,
    idle_timeout_s: float = 20,
) -> dict[str, Any]:
    """A complete autoscaling config for the fake provider (what `ray up` would have filled in)."""
    return {
        "cluster_name": "shipyard-local",
        "max_workers": 2 * max_workers_per_type,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "external",
            "module": "shipyard.compute.localcluster.LocalSpotProvider",
            "gcs_address": gcs_address,
            "head_node_id": FAKE_HEAD_NODE_ID,
            "launch_multiple": True,
            "outage_file": str(outage_file),
        },
        "auth": {"ssh_user": os.environ.get("USER", "ray")},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu-spot": worker_type(
                10, "spot", cpus_per_node, max_workers_per_type, idle_timeout_s
            ),
            "cpu-ondemand": worker_type(
                1, "on-demand", cpus_per_node, max_workers_per_type, idle_timeout_s
            ),
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class AutoscalingLocalCluster(LocalCluster):
    """A `LocalCluster` whose head runs the v2 autoscaler over fake spot/on-demand nodes, plus the
    spot fallback controller; both live in the cluster's process group."""

    def __init__(
        self,
        state_dir: Path,
        cpus_per_node: int = 1,
        max_workers_per_type: int = 2,
        idle_timeout_s: float = 20,
        fallback_cooldown_s: float = 600,
        env: dict[str, str] | None = None,
        timeout_s: float = 120,
    ):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state_dir / "autoscaling.yaml"
        self.outage_file = self.state_dir / "spot-outage"
        self.events_path = self.state_dir / "events.jsonl"
        self.fallback_cooldown_s = fallback_cooldown_s
        super().__init__(
            num_cpus=0,
            log_path=self.state_dir / "ray-start.log",
            timeout_s=timeout_s,
            env={
                **(env or {}),
                "RAY_FAKE_CLUSTER": "1",
                "RAY_enable_autoscaler_v2": "1",
                "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            },
        )
        self.outage_file.unlink(missing_ok=True)
        cfg = autoscaling_config(
            self.gcs_address, self.outage_file, cpus_per_node, max_workers_per_type, idle_timeout_s
        )
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        # A new cluster starts from the configured priorities, not a previous run's fallback.
        (self.state_dir / "autoscaling.yaml.spot-fallback.json").unlink(missing_ok=True)
        self.extra_args = [f"--autoscaling-config={self.config_path}"]

    def command(self) -> list[str]:
        """`ray start` with the fallback controller beside it, in the same session and group (a
        process cannot join another session's group, so the shell starts both)."""
        fallback = [
            sys.executable, "-m", "shipyard.compute.spot", "fallback",
            "--config", str(self.config_path), "--address", self.gcs_address,
            "--cooldown", str(self.fallback_cooldown_s), "--interval", "2",
            "--events", str(self.events_path),
        ]  # fmt: skip
        log = self.state_dir / "spot-fallback.log"
        script = f'{shlex.join(fallback)} > {shlex.quote(str(log))} 2>&1 &\nexec "$@"'
        return ["/bin/sh", "-c", script, "sh", *super().command()]

    def outage(self, on: bool) -> None:
        if on:
            self.outage_file.touch()
        else:
            self.outage_file.unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        assert self.proc is not None
        return {
            "pgid": self.proc.pid,
            "address": self.address,
            "gcs_address": self.gcs_address,
            "config": str(self.config_path),
            "outage_file": str(self.outage_file),
            "temp_dir": self.temp_dir,
        }


# ------------------------------------------------------------------------- node inspection ---


def worker_nodes(gcs_address: str) -> list[dict[str, Any]]:
    """Alive worker nodes (not the head) with their node type and capacity label."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated import gcs_pb2

    out = []
    for info in GcsClient(address=gcs_address).get_all_node_info().values():
        if info.state != gcs_pb2.GcsNodeInfo.ALIVE or info.is_head_node:
            continue
        labels = dict(info.labels)
        out.append(
            {
                "node_id": info.node_id.hex(),
                "node_type": labels.get("ray.io/node-group") or info.node_type_name,
                "capacity": labels.get(CAPACITY_LABEL),
                "resources": dict(info.resources_total),
            }
        )
    return out


def pids_of_node(pgid: int, node_id: str) -> list[int]:
    """Every process of one fake node: those started for it (the node id is on their command
    line: raylet, agents) and all their descendants (the raylet's workers, whose command lines
    are rewritten to `ray::<actor>` and do not show the node id). A real reclaim takes the
    whole VM; killing only the raylet would leave its workers running on a dead node."""
    roots = []
    for proc in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(proc)
        if stat is None or int(stat[2]) != pgid:  # workers have groups of their own
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if node_id in cmdline:
            roots.append(int(proc.name))
    return sorted({pid for root in roots for pid in descendants(root)})


def preempt(gcs_address: str, pgid: int, node_id: str, notice_s: int = 2) -> list[int]:
    """A spot reclaim: drain with reason PREEMPTION (as the watcher does), wait, kill the node."""
    from shipyard.compute.spot import Notice, drain_command

    cmd = drain_command(node_id, gcs_address, Notice("local", "terminate", notice_s))
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ray_env())
    time.sleep(notice_s)
    pids = pids_of_node(pgid, node_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


# ------------------------------------------------------------------------------------- CLI ---


def _load(state: Path) -> dict[str, Any]:
    path = state / "cluster.json"
    if not path.exists():
        raise SystemExit(f"no local cluster under {state} (start one with `make cluster-up`)")
    return dict(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m shipyard.compute.localcluster", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--state", type=Path, default=Path(os.environ.get("SHIPYARD_HOME", "state")) / "cluster"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster in the background")
    up.add_argument(
        "--idle-timeout", type=float, default=60, help="seconds before an idle node goes"
    )
    up.add_argument("--max-workers-per-type", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=1)
    sub.add_parser("down", help="stop the cluster started by `up` (its own process group only)")
    sub.add_parser("status", help="worker nodes by type")
    o = sub.add_parser("outage", help="simulate a spot capacity outage")
    o.add_argument("state_", choices=["on", "off"], metavar="on|off")
    p = sub.add_parser("preempt", help="drain (PREEMPTION) and kill a worker node")
    p.add_argument("node_id")
    args = ap.parse_args(argv)
    state: Path = args.state.resolve()

    if args.cmd == "up":
        if (state / "cluster.json").exists() and group_alive(_load(state)["pgid"]):
            print(f"already running: {json.dumps(_load(state))}")
            return 0
        home = state.parent
        env = {"SHIPYARD_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
        c = AutoscalingLocalCluster(
            state, args.cpus_per_node, args.max_workers_per_type, args.idle_timeout, env=env
        )
        c.start()
        info = c.info()
        (state / "cluster.json").write_text(json.dumps(info, indent=1))
        c.proc = None  # keep it running after this command exits
        print(f"local autoscaling cluster up: {c.address} (head 0 CPU; cpu-spot, cpu-ondemand)")
        print(f"  ray job submit --address {c.address} -- python -m jobs.train --config FILE")
        print("  python -m shipyard.compute.localcluster status | outage on|off | preempt NODE_ID")
        return 0
    info = _load(state)
    if args.cmd == "down":
        pgid = int(info["pgid"])
        stop_group(pgid, grace_s=10)
        shutil.rmtree(info["temp_dir"], ignore_errors=True)
        (state / "cluster.json").unlink()
        print(f"stopped process group {pgid}")
    elif args.cmd == "status":
        print(json.dumps(worker_nodes(info["gcs_address"]), indent=1))
    elif args.cmd == "outage":
        outage_file = Path(info["outage_file"])
        if args.state_ == "on":
            outage_file.touch()
        else:
            outage_file.unlink(missing_ok=True)
        print(f"spot outage {args.state_}")
    elif args.cmd == "preempt":
        print(f"killed {preempt(info['gcs_address'], int(info['pgid']), args.node_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
