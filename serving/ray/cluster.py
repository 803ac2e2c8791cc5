"""Joining a Ray cluster, or starting a local one on loopback: what `semgen serve --engine ray` and
`semgen batch --ray` share."""

from __future__ import annotations

import math
import os

import ray


def start_ray(address: str | None, cpus: float = 0.0) -> bool:
    """Join `address` (auto, ray://host:10001), or start a local Ray on 127.0.0.1 when it is empty; True when we
    started it (and must stop it with `ray.shutdown()`). A local Ray offers at least `cpus` logical CPUs: the
    replicas asked for share this machine's cores; a cluster must have them (ValueError)."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            start_local_ray(max(os.cpu_count() or 1, math.ceil(cpus)))
            return True
    has = ray.cluster_resources().get("CPU", 0.0)
    if has < cpus:
        raise ValueError(f"the Ray cluster has {has:g} CPUs; the replicas asked for need {cpus:g} "
                         "(--ray-replicas, --ray-job-replicas, --ray-replica-cpus)")
    return False


def start_local_ray(num_cpus: int, attempts: int = 2) -> None:
    """A local Ray on loopback. Its node can miss Ray's 30 s registration window on a loaded machine (seen once
    in this project's tests: "The current node timed out during startup"); the start is then tried again from
    a clean state, and the last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, num_cpus=num_cpus)
            return
        except Exception as err:  # Ray raises a bare Exception for this timeout
            ray.shutdown()  # stops what the failed start left running
            if attempt == attempts or "timed out during startup" not in str(err):
                raise
