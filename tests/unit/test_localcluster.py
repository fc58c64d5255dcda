"""The local cluster's fake spot reclaim finds every process of a node, workers included."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shipyard.compute.localcluster import pids_of_node

# A "raylet" (node id on its command line, in the cluster's process group) that starts a
# "worker" in a process group of its own, as Ray's raylet does.
RAYLET = """
import subprocess, sys, time
w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(w.pid, flush=True)
time.sleep(60)
"""


def test_a_nodes_processes_include_its_workers_in_other_groups() -> None:
    raylet = subprocess.Popen(
        [sys.executable, "-c", RAYLET, "--node_id=abc123"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--node_id=zzz"])
    worker = 0
    try:
        assert raylet.stdout is not None
        worker = int(raylet.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the worker is its own group's leader
            pids = pids_of_node(raylet.pid, "abc123")
            if worker in pids:
                break
            time.sleep(0.1)
        assert pids == sorted([raylet.pid, worker])  # not `other`, not this test process
        assert pids_of_node(raylet.pid, "zzz") == []  # `other` is not in the cluster's group
    finally:
        for p in (raylet, other):
            p.kill()
            p.wait()
        if worker:
            subprocess.run(["kill", "-9", str(worker)], check=False, capture_output=True)


def test_a_stale_group_number_kills_only_processes_carrying_the_clusters_tmpdir(
    tmp_path: Path,
) -> None:
    """Once a cluster's `ray start` is gone and reaped, its group's number may lead another
    group (pids wrap): only the processes with the cluster's TMPDIR are killed."""
    from shipyard.compute.localray import group_members, kill_marked

    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    # One group, two kinds of member: the cluster's (its TMPDIR) and a stranger's.
    leader = subprocess.Popen(
        ["sh", "-c", f"TMPDIR={theirs} sleep 60 & sleep 60 & wait"],
        env={**os.environ, "TMPDIR": ours},
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        members = [pid for pid in group_members(leader.pid) if pid != leader.pid]
        assert len(members) == 2, members
        killed = kill_marked(leader.pid, ours)
        time.sleep(0.2)
        alive = [pid for pid in members if pid in group_members(leader.pid)]
        assert leader.pid in killed and len(alive) == 1  # the stranger's sleep lives on
        assert f"TMPDIR={theirs}".encode() in Path(f"/proc/{alive[0]}/environ").read_bytes()
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
