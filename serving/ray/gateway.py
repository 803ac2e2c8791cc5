"""`semgen serve --engine ray`: the gateway's engines forward to Ray Serve.

Two applications of the same replica class (serving/ray/replica.py) run on a Ray cluster: "semgen-forward" for
the forward models (Generate, Repaint, Composite, Sample, Segment; `--ray-replicas`, autoscaled up to
`--ray-max-replicas`) and "semgen-jobs" for the iterative jobs (SampleConditional, EditSemantics, Imagine;
`--ray-job-replicas`). The gateway stays ours: the same gRPC API, checks and metrics; the engines are
serving/remote.py's, on a RayServeClient. HiganService stays embedded in the gateway. The bundle travels to the
replicas through the object store (serving/ray/package.py); user heads through a mirror actor, with the gateway's
--heads-dir as their record (serving/ray/heads.py). With --ray-address the applications join that cluster (and
are deleted from it at the end); otherwise a local Ray is started on loopback and stopped at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path

import ray
import torch
from ray import serve

from semgen.bundle import Bundle
from serving.core.metrics import ServingMetrics
from serving.engines import embedded_higan
from serving.ray.client import RayServeClient
from serving.ray.cluster import start_ray
from serving.ray.heads import mirror, unpack_head, user_heads
from serving.ray.package import pack_bundle
from serving.ray.replica import Replica
from serving.remote import connect_engines

FORWARD_APP, JOBS_APP = "semgen-forward", "semgen-jobs"

log = logging.getLogger("serving.ray")


def replica_options(opts) -> dict:
    """The ServeOptions a replica loads its embedded engines with: absolute paths (a replica's working folder is
    Ray's), no ports, the embedded engine."""
    options = dataclasses.asdict(opts)
    for name in ("models", "onnx_dir", "heads_dir", "classifier", "imagine_classifier"):
        if options[name]:
            options[name] = str(Path(options[name]).resolve())
    return {**options, "engine": "embedded", "ray_address": "", "port": 0, "metrics_port": 0, "token_file": "",
            "tls_cert": "", "tls_key": "", "tls_client_ca": ""}


def publish_bundle(opts, export: Path | None) -> dict:
    """The bundle (and `export`, the ONNX export it serves) packed once into Ray's object store: what a replica on
    any node unpacks into its node's cache (serving/ray/package.py), so no node needs the gateway's disk."""
    key, blob = pack_bundle(opts.models, export)
    log.info("bundle %s: %.1f MiB in the object store", key, len(blob) / 2**20)
    return {"key": key, "blob": ray.put(blob)}  # in a dict: Ray hands the replica the reference, not the bytes


def deploy(opts, export: Path | None) -> tuple:
    """Run both applications on the cluster; their handles."""
    serve.start(http_options={"location": "NoServer"})  # handles only: no HTTP proxy
    options, package = replica_options(opts), publish_bundle(opts, export)
    # the gateway's --heads-dir is the record of the user heads: the mirror starts from it
    ray.get(mirror().seed.remote(user_heads(Path(opts.heads_dir))))
    actor = {"num_cpus": opts.ray_replica_cpus, "num_gpus": opts.ray_replica_gpus}
    scaling = ({"autoscaling_config": {"min_replicas": opts.ray_replicas, "max_replicas": opts.ray_max_replicas,
                                       "target_ongoing_requests": opts.max_batch,
                                       "upscale_delay_s": opts.ray_upscale_delay_s,
                                       "downscale_delay_s": opts.ray_downscale_delay_s}}
               if opts.ray_max_replicas > opts.ray_replicas else {"num_replicas": opts.ray_replicas})
    forward = serve.deployment(Replica, name="forward").options(
        ray_actor_options=actor, max_ongoing_requests=2 * opts.max_batch, **scaling)
    jobs = serve.deployment(Replica, name="jobs").options(
        ray_actor_options=actor, num_replicas=opts.ray_job_replicas, max_ongoing_requests=opts.max_jobs)
    handles = []
    for app, deployment in ((FORWARD_APP, forward), (JOBS_APP, jobs)):
        handles.append(serve.run(deployment.bind(options, torch.get_num_threads(), package), name=app,
                                 route_prefix=None))
        log.info("Ray Serve application %s is running", app)
    return tuple(handles)


SCALING = ("UPSCALING", "DOWNSCALING")  # autoscaling at work: not capacity lost


def serve_capacity() -> tuple[str, dict[str, int]]:
    """(what of the two applications Ray Serve does not run as asked, "" when all is well, e.g.
    "semgen-forward: UNHEALTHY (RUNNING 1, PENDING_ALLOCATION 1)": replicas lost with a node and not placed again;
    the replicas RUNNING per application)."""
    problems, running = [], {}
    for app, overview in sorted(serve.status().applications.items()):
        running[app] = 0
        for deployment in overview.deployments.values():
            states = {getattr(k, "value", k): n for k, n in deployment.replica_states.items()}  # str enums or str
            running[app] += states.get("RUNNING", 0)
            status = getattr(deployment.status, "value", deployment.status)
            if status not in ("HEALTHY", *SCALING):
                problems.append(f"{app}: {status} ({', '.join(f'{k} {n}' for k, n in sorted(states.items()))})")
    return "; ".join(problems), running


class CapacityWatch:
    """`serve_capacity`, polled on a thread every `period` seconds (a call to Serve's controller must not block
    the gateway's loop); `now()` is the last answer, a change is logged and sets semgen_backend_degraded; the
    running replicas go to semgen_backend_replicas."""

    def __init__(self, metrics: ServingMetrics, period: float = 1.0):
        self.state, self._stop, self._metrics = "", threading.Event(), metrics
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True, name="semgen-ray-capacity")
        self._thread.start()

    def now(self) -> str:
        return self.state

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                state, running = serve_capacity()
            except Exception as e:  # the controller unreachable for a moment: say so, keep watching
                state, running = f"Ray Serve status unavailable ({type(e).__name__})", {}
            for app, count in running.items():
                self._metrics.backend_replicas.labels(app).set(count)
            if state != self.state:
                log.warning("Ray Serve capacity: %s", state or "all replicas running again")
                self.state = state
                self._metrics.backend_degraded.set(1 if state else 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def load_ray(opts, metrics: ServingMetrics):
    """Engines for `opts` (a ServeOptions) that forward to Ray Serve; blocking (runs in a thread)."""
    # ExportMissing names the command, before Ray starts
    export = Bundle(opts.models).exported_onnx(opts.onnx_dir) if opts.runtime == "onnx" else None
    # the least the cluster must hold; autoscaling adds forward replicas up to --ray-max-replicas where it can
    replicas = opts.ray_replicas + opts.ray_job_replicas
    started_here = start_ray(opts.ray_address, opts.ray_replica_cpus * replicas, opts.ray_replica_gpus * replicas)

    watch: list[CapacityWatch] = []

    def stop() -> None:
        for w in watch:
            w.stop()
        for app in (FORWARD_APP, JOBS_APP):
            serve.delete(app)
        ray.kill(mirror())  # the heads are kept in --heads-dir; the next gateway seeds a new mirror
        if started_here:
            serve.shutdown()
            ray.shutdown()

    try:
        forward, jobs = deploy(opts, export)
    except BaseException:
        stop()
        raise
    async def keep_head(name: str) -> None:  # a head a replica fitted, into the gateway's record
        unpack_head(await mirror().get.remote(name), Path(opts.heads_dir) / name)

    client = RayServeClient(forward, jobs, metrics, opts.max_queue, opts.max_job_seconds, on_close=stop,
                            head_fitted=keep_head)
    try:
        engines = asyncio.run(connect_engines(client, opts.models))
        engines.higan = embedded_higan(opts, metrics)
        watch.append(CapacityWatch(metrics))
        engines.backend_degraded = watch[0].now
    except BaseException:
        asyncio.run(client.close())
        raise
    return engines
