"""A Ray cluster of two nodes on this machine's loopback, made with Ray's own test cluster in a process of its own,
with the dashboard's job agents so that jobs can be submitted to it: what `semgen bench batch --cluster` (Ray
Jobs), `semgen bench autoscale` and the cluster tests run against. One CPU per node by default, so that work asked
for more than one CPU spreads over both."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

from serving.ray.cluster import is_loopback

SCRIPT = textwrap.dedent("""
    import sys
    from ray.cluster_utils import Cluster

    cpus = float(sys.argv[1])
    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": 0}  # two agents, no clash
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": True, "dashboard_port": 0,
                                                            "dashboard_host": "127.0.0.1"})
    worker = cluster.add_node(**node)
    cluster.wait_for_nodes()
    print(cluster.address, "http://" + cluster.head_node.address_info["webui_url"], flush=True)
    try:
        for line in sys.stdin:  # "remove": the worker node's processes killed at once; "add": a new worker node
            if line.strip() == "remove":
                cluster.remove_node(worker, allow_graceful=False)
            elif line.strip() == "add":
                worker = cluster.add_node(**node)
                cluster.wait_for_nodes()
            print("done", flush=True)
    finally:
        cluster.shutdown()
""")


@dataclass
class LoopbackCluster:
    address: str  # the GCS, for --ray-address
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit --address`
    proc: subprocess.Popen

    def tell(self, command: str) -> None:
        """"remove" the worker node (its processes killed) or "add" one, and wait until it is done."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if (answer := self.proc.stdout.readline().strip()) != "done":
            raise RuntimeError(f"the loopback cluster did not do {command!r}: {answer!r}")


@contextlib.contextmanager
def loopback_cluster(cpus_per_node: float = 1.0):
    """Two Ray nodes on 127.0.0.1, shut down on exit. Every process of the cluster runs with Ray's single-machine
    switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): without it the nodes' own agents and the job drivers swap
    127.0.0.1 for the machine's routable address, where nothing listens, and no job can be submitted."""
    # a loaded machine can take longer than Ray's 30 s for a GCS to write its port (seen in CI): 120 s
    env = {"RAY_gcs_server_port_wait_time_s": "120", **os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(cpus_per_node)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        address, dashboard = (proc.stdout.readline().split() + ["", ""])[:2]
        if not is_loopback(address):
            raise RuntimeError(f"the loopback cluster did not start (it said {address!r})")
        yield LoopbackCluster(address, dashboard, proc)
    finally:
        proc.stdin.close()  # the script shuts the cluster down
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
