"""Spot capacity on Ray: a preemption-notice watcher and an on-demand fallback for autoscaler v2.

Two small daemons, both started by the cluster configs in `cluster/`:

`python -m shipyard.compute.spot watch` runs on every worker. It polls the cloud's preemption notice (AWS
`spot/instance-action`, two minutes ahead; GCP `instance/preempted`, ~30 s ahead) and, on a notice,
drains its own node with reason PREEMPTION (`ray drain-node --reason
DRAIN_NODE_REASON_PREEMPTION`). Ray Train counts a node lost after such a drain as a preemption,
not a failure, so the run restarts from its last checkpoint without using up `max_failures`, and
the scheduler stops placing new work on the node. On a non-spot instance it exits at once.

`python -m shipyard.compute.spot fallback --config FILE` runs on the head. Ray 2.60's autoscaler v2 lowers
a node type's availability only when an instance was allocated and then never came up within
RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S (an hour); an immediate launch failure such as
EC2's InsufficientInstanceCapacity is retried on the same type forever. The controller reads the
autoscaler's failed launches from the GCS and, when a spot type fails to launch, lowers that
type's `priority` in the autoscaling config below every on-demand type for `cooldown_s`; the
autoscaler re-reads the file every loop, so the next launch is on-demand. Priority is not part of
a node type's launch hash, so no running node is touched; node types are never removed (removing a
type whose nodes still run freezes the v2 autoscaler). After the cooldown the original priority is
restored and spot is tried again.

Which types are spot: a node type whose `labels` carry `shipyard.io/capacity: spot`.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from shipyard.storage import write_atomic

logger = logging.getLogger("shipyard.compute.spot")

CAPACITY_LABEL = "shipyard.io/capacity"
AWS_IMDS = "http://169.254.169.254"
GCE_METADATA = "http://metadata.google.internal"
DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"


# --------------------------------------------------------------------------- notice watcher ---


@dataclasses.dataclass(frozen=True)
class Notice:
    cloud: str
    action: str  # terminate | stop | hibernate | preempted
    deadline_s: int  # seconds left until the instance goes


class AwsNotices:
    """EC2 instance metadata (IMDSv2): `spot/instance-action` answers 404 until a notice exists."""

    cloud = "aws"

    def __init__(self, base: str = AWS_IMDS, timeout_s: float = 2.0):
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_at = 0.0

    def _get(self, path: str) -> tuple[int, str]:
        if self._token is None or time.monotonic() - self._token_at > 3000:
            req = urllib.request.Request(
                f"{self.base}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "3600"},
            )
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                self._token, self._token_at = r.read().decode(), time.monotonic()
        req = urllib.request.Request(
            f"{self.base}/latest/meta-data/{path}",
            headers={"X-aws-ec2-metadata-token": self._token},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            if err.code == 401:  # token expired early: fetch a new one next time
                self._token = None
            return err.code, ""

    def is_spot(self) -> bool:
        status, body = self._get("instance-life-cycle")
        return status == 200 and body.strip() == "spot"

    def poll(self) -> Notice | None:
        status, body = self._get("spot/instance-action")
        if status != 200:
            return None
        data = json.loads(body)  # {"action": "terminate", "time": "2026-11-24T10:00:00Z"}
        deadline = 120
        with contextlib.suppress(KeyError, ValueError):
            when = calendar.timegm(time.strptime(data["time"], "%Y-%m-%dT%H:%M:%SZ"))
            deadline = max(0, int(when - time.time()))
        return Notice("aws", str(data.get("action", "terminate")), deadline)


class GcpNotices:
    """GCE metadata: `instance/preempted` turns TRUE about 30 s before a spot VM is stopped."""

    cloud = "gcp"

    def __init__(self, base: str = GCE_METADATA, timeout_s: float = 2.0):
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str) -> tuple[int, str]:
        req = urllib.request.Request(
            f"{self.base}/computeMetadata/v1/instance/{path}",
            headers={"Metadata-Flavor": "Google"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    def is_spot(self) -> bool:
        status, body = self._get("scheduling/preemptible")
        return status == 200 and body.strip().upper() == "TRUE"

    def poll(self) -> Notice | None:
        status, body = self._get("preempted")
        if status == 200 and body.strip().upper() == "TRUE":
            return Notice("gcp", "preempted", 30)
        return None


def drain_command(
    node_id: str, gcs_address: str, notice: Notice, ray_bin: str | None = None
) -> list[str]:
    return [
        ray_bin or str(Path(sys.executable).with_name("ray")), "drain-node",
        "--address", gcs_address,
        "--node-id", node_id,
        "--reason", DRAIN_REASON,
        "--reason-message", f"{notice.cloud} spot notice: {notice.action} in {notice.deadline_s}s",
        "--deadline-remaining-seconds", str(notice.deadline_s),
    ]  # fmt: skip


def watch(
    source: Any,
    drain: Callable[[Notice], None],
    interval_s: float = 5.0,
    stop: Callable[[], bool] = lambda: False,
) -> Notice | None:
    """Poll until a notice arrives, drain once, return it. Metadata errors are retried."""
    while not stop():
        try:
            notice: Notice | None = source.poll()
        except (OSError, ValueError) as err:
            logger.warning("metadata poll failed (%s); retrying", err)
            notice = None
        if notice is not None:
            logger.warning("preemption notice: %s; draining this node", notice)
            drain(notice)
            return notice
        time.sleep(interval_s)
    return None


def _local_node_id(gcs_address: str) -> str:
    import ray

    ray.init(address=gcs_address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        return str(ray.get_runtime_context().get_node_id())
    finally:
        ray.shutdown()


def _detect_cloud(metadata_url: str | None) -> Any:
    candidates: list[Any] = [
        AwsNotices(metadata_url or AWS_IMDS),
        GcpNotices(metadata_url or GCE_METADATA),
    ]
    for source in candidates:
        try:
            source.is_spot()
            return source
        except OSError:
            continue
    return None


# ------------------------------------------------------------------------ on-demand fallback ---


@dataclasses.dataclass
class FallbackState:
    original_priority: dict[str, int]  # spot type -> its configured priority
    lowered_until: dict[str, float] = dataclasses.field(default_factory=dict)
    seen_failures: list[str] = dataclasses.field(default_factory=list)  # keys already acted on

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FallbackState:
        return cls(**json.loads(text))


def spot_types(config: dict[str, Any]) -> list[str]:
    types = config.get("available_node_types") or {}
    return sorted(
        name
        for name, t in types.items()
        if (t.get("labels") or {}).get(CAPACITY_LABEL) == "spot"
        and name != config.get("head_node_type")
    )


def initial_state(config: dict[str, Any]) -> FallbackState:
    types = config.get("available_node_types") or {}
    return FallbackState({t: int(types[t].get("priority", 0)) for t in spot_types(config)})


def lowered_priority(config: dict[str, Any], state: FallbackState) -> int:
    """Below every type that is not a spot type, so any on-demand type that fits wins."""
    types = config.get("available_node_types") or {}
    others = [
        int(t.get("priority", 0))
        for name, t in types.items()
        if name not in state.original_priority and name != config.get("head_node_type")
    ]
    return min([0, *others]) - 1


def step(
    config: dict[str, Any],
    state: FallbackState,
    failures: Iterable[tuple[str, int, str]],
    now: float,
    cooldown_s: float,
) -> tuple[dict[str, int], list[str]]:
    """One control step: failed launches (type, failed_ts, reason) -> priorities to write.

    Returns ({node type: priority} for every spot type whose priority must change, log lines).
    Pure: the caller reads failures from the GCS and writes the config file.
    """
    changes: dict[str, int] = {}
    notes: list[str] = []
    types = config.get("available_node_types") or {}
    low = lowered_priority(config, state)
    seen = set(state.seen_failures)
    for node_type, failed_ts, reason in failures:
        key = f"{node_type}@{failed_ts}"
        if node_type not in state.original_priority or key in seen:
            continue
        seen.add(key)
        state.seen_failures.append(key)
        if failed_ts + cooldown_s <= now:
            continue  # an old failure (e.g. seen after a controller restart): already past
        until = failed_ts + cooldown_s
        if state.lowered_until.get(node_type, 0) < until:
            state.lowered_until[node_type] = until
        notes.append(
            f"spot type {node_type!r} failed to launch ({reason.strip()[:200]}); "
            f"on-demand first until {time.strftime('%H:%M:%S', time.localtime(until))}"
        )
    for node_type, until in list(state.lowered_until.items()):
        current = int(types.get(node_type, {}).get("priority", 0))
        if until > now:
            if current != low:
                changes[node_type] = low
        else:
            del state.lowered_until[node_type]
            if current != state.original_priority[node_type]:
                changes[node_type] = state.original_priority[node_type]
                notes.append(f"spot type {node_type!r}: cooldown over, spot preferred again")
    del state.seen_failures[:-1000]
    return changes, notes


def _failed_launches(gcs_address: str) -> list[tuple[str, int, str]]:
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    return [
        (f.ray_node_type_name, int(f.failed_ts_s or 0), f.details or "")
        for f in status.failed_launches
    ]


def run_fallback(
    config_path: Path,
    gcs_address: str,
    cooldown_s: float,
    interval_s: float,
    events_path: Path | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    from shipyard.events import EventLog

    events = EventLog(events_path) if events_path else None
    state_path = config_path.with_name(config_path.name + ".spot-fallback.json")
    config = yaml.safe_load(config_path.read_text())
    if state_path.exists():  # restarted: keep the priorities the operator configured
        state = FallbackState.from_json(state_path.read_text())
    else:
        state = initial_state(config)
        write_atomic(state_path, state.to_json())
    if not state.original_priority:
        logger.warning(
            "no node type is labelled %s=spot in %s; nothing to do", CAPACITY_LABEL, config_path
        )
    logger.info(
        "spot fallback: watching %s (cooldown %ss)", sorted(state.original_priority), cooldown_s
    )
    while not stop():
        try:
            failures = _failed_launches(gcs_address)
        except Exception as err:  # GCS restarting, autoscaler not up yet
            logger.warning("cluster status unavailable: %s", err)
            failures = []
        config = yaml.safe_load(config_path.read_text())
        changes, notes = step(config, state, failures, time.time(), cooldown_s)
        if changes:
            for node_type, priority in changes.items():
                config["available_node_types"][node_type]["priority"] = priority
            write_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
        for note in notes:
            logger.warning(note)
            if events:
                events.emit("spot_fallback", message=note, priorities=changes)
        if changes or notes:  # the state only moves when something happened
            write_atomic(state_path, state.to_json())
        time.sleep(interval_s)


# ------------------------------------------------------------------------------------- CLI ---


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ap = argparse.ArgumentParser(
        prog="python -m shipyard.compute.spot", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="on a worker: drain this node when a preemption notice comes")
    w.add_argument("--address", default="127.0.0.1:6379", help="GCS address (head:6379)")
    w.add_argument("--node-id", help="default: this machine's Ray node")
    w.add_argument("--cloud", choices=["auto", "aws", "gcp"], default="auto")
    w.add_argument("--metadata-url", help="metadata server (tests, proxies)")
    w.add_argument("--interval", type=float, default=5.0)
    d = sub.add_parser("drain-self", help="drain this node now (a Kubernetes preStop hook)")
    d.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "127.0.0.1:6379"))
    d.add_argument("--deadline", type=int, default=60, help="seconds until the node goes")
    f = sub.add_parser("fallback", help="on the head: prefer on-demand while spot cannot launch")
    f.add_argument("--config", required=True, type=Path, help="the autoscaling config file")
    f.add_argument("--address", default="127.0.0.1:6379", help="GCS address")
    f.add_argument("--cooldown", type=float, default=600.0, help="seconds on-demand stays first")
    f.add_argument("--interval", type=float, default=5.0)
    f.add_argument("--events", type=Path, help="also append events to this JSONL file")
    args = ap.parse_args(argv)

    if args.cmd == "fallback":
        run_fallback(
            args.config.expanduser(), args.address, args.cooldown, args.interval, args.events
        )
        return 0
    if args.cmd == "drain-self":
        notice = Notice("kubernetes", "pod terminating", args.deadline)
        cmd = drain_command(_local_node_id(args.address), args.address, notice)
        return subprocess.run(cmd).returncode
    if args.cloud == "aws":
        source: Any = AwsNotices(args.metadata_url or AWS_IMDS)
    elif args.cloud == "gcp":
        source = GcpNotices(args.metadata_url or GCE_METADATA)
    else:
        source = _detect_cloud(args.metadata_url)
        if source is None:
            logger.info("no cloud metadata server answers: not a cloud VM, nothing to watch")
            return 0
    if not source.is_spot():
        logger.info("%s instance is not spot: nothing to watch", source.cloud)
        return 0
    node_id = args.node_id or _local_node_id(args.address)

    def drain(notice: Notice) -> None:
        proc = subprocess.run(
            drain_command(node_id, args.address, notice), capture_output=True, text=True
        )
        if proc.returncode != 0:
            logger.error("drain failed: %s", (proc.stderr or proc.stdout)[-2000:])

    watch(source, drain, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
