"""A local Ray cluster of one's own: `ray start --head --block` on free ports in a private temp dir.

Stopping it signals only the process this object started (and its process group), never other
Ray clusters on the machine — unlike `ray stop`, which stops every Ray process it finds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from shipyard.contract import PROXY_CALLBACK

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(proc: Path) -> list[str] | None:
    """The fields of `/proc/<pid>/stat` after the command name (state, ppid, pgrp, ...), or
    None when the process is gone."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """The running processes of one process group (zombies do not count)."""
    members = []
    for proc in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(proc)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    return bool(group_members(pgid))


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to one process group (a graceful Ray stop), SIGKILL to whatever is left after
    `grace_s`. Only that group: never `ray stop`, which stops every Ray on the machine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_marked(pgid: int, tmpdir: str) -> list[int]:
    """SIGKILL to the processes of group `pgid` whose environment has TMPDIR=`tmpdir`: a
    cluster's own processes once its leader is gone, when the group's number may since lead
    another group (pids wrap at pid_max, 32,768 on small machines)."""
    marker = f"TMPDIR={tmpdir}".encode()
    killed = []
    for pid in group_members(pgid):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return killed


def ray_env() -> dict[str, str]:
    """Environment for Ray subprocesses: explicit auth mode, no usage stats, no MLflow telemetry."""
    env = dict(os.environ)
    # The cluster runs in this interpreter's environment: `python` in a job's entrypoint is ours.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        [bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir]]
    )
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault(*PROXY_CALLBACK)  # Serve's proxies enforce the body limit (serving.edge)
    return env


class LocalCluster:
    """`with LocalCluster(num_cpus=2) as c: ...`; `c.address` is the job/dashboard HTTP address."""

    def __init__(
        self,
        num_cpus: int = 2,
        log_path: Path | None = None,
        timeout_s: float = 120,
        env: dict[str, str] | None = None,
    ):
        self.num_cpus = num_cpus
        self.env = env or {}  # extra environment of every Ray process (e.g. an admin token)
        self.metrics_port = free_port()
        self.timeout_s = timeout_s
        self.temp_dir = tempfile.mkdtemp(prefix="sy-ray-")
        self.log_path = log_path or Path(self.temp_dir) / "ray-start.log"
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []  # more `ray start` flags (e.g. --autoscaling-config)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def command(self) -> list[str]:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin, "start", "--head", "--block",
            f"--num-cpus={self.num_cpus}", "--num-gpus=0",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={self.metrics_port}",
            f"--runtime-env-agent-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *self.extra_args,
        ]  # fmt: skip
        return cmd

    def start(self) -> LocalCluster:
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            # TMPDIR: what Ray's processes leave in temporary directories (a killed trial's,
            # the dashboard's multiprocessing sockets) goes with the cluster's own temp dir.
            env={**ray_env(), "TMPDIR": self.temp_dir, **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"Ray dashboard did not answer within {self.timeout_s}s; see {self.log_path}"
        )

    def stop(self) -> None:
        """Stop this cluster only: SIGTERM to the process group our `ray start` leads (GCS, raylet,
        workers: a graceful stop), then SIGKILL to that group for anything still running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # start_new_session=True and our `ray start` not yet reaped: the group is ours
            # alone; a throwaway cluster: short grace
            stop_group(self.proc.pid, grace_s=5)
        else:  # it exited and was reaped: its number may lead someone else's group by now
            kill_marked(self.proc.pid, self.temp_dir)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a node's raylet, agents and the workers they start,
    whatever process group each is in)."""
    parent: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(proc)
        if stat is not None:
            parent[int(proc.name)] = int(stat[1])
    found = {pid} if pid in parent else set()
    grew = True
    while grew:
        children = {p for p, pp in parent.items() if pp in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


class LocalNode:
    """A worker node joining a `LocalCluster` on this machine (`ray start --address`), with Ray
    labels of its own: what a multi-node cluster looks like on one machine. `kill()` does what
    losing the machine does: SIGKILL to its `ray start`, raylet, agents and every worker on it."""

    def __init__(
        self,
        cluster: LocalCluster,
        num_cpus: int = 1,
        labels: dict[str, str] | None = None,
        timeout_s: float = 120,
    ) -> None:
        self.cluster = cluster
        self.num_cpus = num_cpus
        self.labels = labels or {}
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id: str | None = None

    def command(self) -> list[str]:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin, "start", f"--address={self.cluster.gcs_address}", "--block",
            f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--disable-usage-stats",
        ]  # fmt: skip
        if self.labels:
            cmd.append("--labels=" + ",".join(f"{k}={v}" for k, v in self.labels.items()))
        return cmd

    def start(self) -> LocalNode:
        """Start the node and wait until the cluster lists it alive (its node id, read from
        its raylet's command line)."""
        log = (Path(self.cluster.temp_dir) / f"node-{free_port()}.log").open("wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT,
            env={**ray_env(), "TMPDIR": self.cluster.temp_dir, **self.cluster.env},
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start (worker) exited with {self.proc.returncode}")
            self.node_id = self.node_id or _raylet_node_id(self.proc.pid)
            if self.node_id and self.node_id in alive_nodes(self.cluster.gcs_address):
                return self
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"the worker node did not join within {self.timeout_s}s")

    def kill(self) -> list[int]:
        """SIGKILL to the whole node at once (no drain, no graceful stop); the pids killed."""
        return self._end(graceful=False)

    def stop(self) -> None:
        """A graceful stop of this node only, then SIGKILL to whatever of it is left."""
        self._end(graceful=True)

    def _end(self, graceful: bool) -> list[int]:
        if self.proc is None:
            return []
        pids = descendants(self.proc.pid)  # before the stop: workers outlive their raylet
        if graceful:
            stop_group(self.proc.pid, grace_s=5)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        return pids


def _raylet_node_id(pid: int) -> str | None:
    """The node id on the command line of the raylet below `pid` (None: not started yet)."""
    for child in descendants(pid):
        try:
            args = (Path(f"/proc/{child}/cmdline")).read_bytes().decode(errors="replace")
        except OSError:
            continue
        for arg in args.split("\0"):
            if arg.startswith("--node_id="):
                return arg.removeprefix("--node_id=")
    return None


def alive_nodes(gcs_address: str) -> list[str]:
    """Ids (hex) of the cluster's alive nodes, head included."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated import gcs_pb2

    infos = GcsClient(address=gcs_address).get_all_node_info().values()
    return [i.node_id.hex() for i in infos if i.state == gcs_pb2.GcsNodeInfo.ALIVE]
