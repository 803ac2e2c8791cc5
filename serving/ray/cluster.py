"""Joining a Ray cluster, or starting a local one on loopback: what `semgen serve --engine ray` and
`semgen batch --ray` share."""

from __future__ import annotations

import math
import os

import ray


SERVE_FLAGS = {"CPU": "--ray-replicas, --ray-job-replicas, --ray-replica-cpus",
               "GPU": "--ray-replicas, --ray-job-replicas, --ray-replica-gpus"}


def start_ray(address: str | None, cpus: float = 0.0, gpus: float = 0.0, flags: dict[str, str] = SERVE_FLAGS) -> bool:
    """Join `address` (auto, ray://host:10001), or start a local Ray on 127.0.0.1 when it is empty; True when we
    started it (and must stop it with `ray.shutdown()`). A local Ray offers at least `cpus` logical CPUs: the
    work asked for shares this machine's cores; a cluster must have them, and `gpus` GPUs (ValueError naming the
    `flags` that asked for each)."""
    started = False
    if not ray.is_initialized():
        if address:
            if is_loopback(address):
                keep_loopback()
            ray.init(address=address, log_to_driver=False)
        else:
            start_local_ray(max(os.cpu_count() or 1, math.ceil(cpus)))
            started = True
    resources = ray.cluster_resources()
    for kind, need in (("CPU", cpus), ("GPU", gpus)):
        if resources.get(kind, 0.0) < need:
            if started:
                ray.shutdown()
            raise ValueError(f"the Ray cluster has {resources.get(kind, 0.0):g} {kind}s; what was asked for needs "
                             f"{need:g} ({flags[kind]})")
    return started


def is_loopback(address: str) -> bool:
    """Whether a cluster address (host:port, ray://host:port) names this machine's loopback interface."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def keep_loopback() -> None:
    """Connect to a cluster on loopback as given. Ray on Linux replaces a loopback address with this machine's
    routable IP before connecting (its services.resolve_ip_for_localhost), where a head started with
    `--node-ip-address 127.0.0.1` does not listen: the gateway then times out against its own machine. Ray's switch
    for single-machine clusters (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read into ray_constants at import) keeps
    loopback; it is set here because ray is imported before the address is known."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(num_cpus: int, attempts: int = 2) -> None:
    """A local Ray on loopback. On a loaded machine its start can miss one of Ray's 30 s windows (seen in this
    project's tests and CI: "The current node timed out during startup", "Timed out waiting for file
    .../gcs_server_port_..."); the start is then tried again from a clean state, and the last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, num_cpus=num_cpus)
            return
        except Exception as err:  # Ray raises a bare Exception for this timeout
            ray.shutdown()  # stops what the failed start left running
            if attempt == attempts or "timed out" not in str(err).lower():
                raise
