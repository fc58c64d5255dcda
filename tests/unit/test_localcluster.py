"""The local cluster's fake spot reclaim finds every process of a node, workers included."""

import subprocess
import sys
import time

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
