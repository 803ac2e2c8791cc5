"""`semgen bench autoscale`: Ray Serve's autoscaling of the forward replicas under a load ramp, on a two-node Ray
cluster on loopback (1 CPU per node).

    semgen bench autoscale --json      # reports/autoscale/autoscale.json and autoscale.png

The gateway is `semgen serve --engine ray --ray-address <the cluster> --ray-replicas 1 --ray-max-replicas 2`; a
load generator keeps `ramp[i]` Generate calls in flight for `phase_s` seconds each, while the gateway's
semgen_backend_replicas (the forward replicas Serve runs) is read every `sample_s`. The report: replicas over time,
each phase's throughput, mean replicas and throughput per replica, and how long Serve took to add and remove one.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from semgen.options import opt
from serving.bench.cluster import loopback_cluster
from serving.bench.inprocess import LEVEL
from serving.bench.process import export_onnx, metric_samples, server_process

FORWARD = "semgen-forward"


@dataclass(frozen=True, kw_only=True)
class AutoscaleBench:
    models: str = opt("artifacts", "the model bundle")
    onnx_dir: str = opt("var/onnx", "the bundle's ONNX export (made when missing)")
    ramp: tuple[int, ...] = opt((1, 16, 1), "Generate calls in flight, one phase each")
    phase_s: float = opt(75.0, "seconds of each phase")
    max_batch: int = opt(4, "the gateway's --max-batch: also Serve's target of calls in flight per replica")
    upscale_delay_s: float = opt(5.0, "the gateway's --ray-upscale-delay-s")
    downscale_delay_s: float = opt(15.0, "the gateway's --ray-downscale-delay-s")
    replica_cpus: float = opt(0.5, "the gateway's --ray-replica-cpus (two forward and one jobs replica: 1.5 of "
                                   "the cluster's 2 CPUs)")
    sample_s: float = opt(0.5, "seconds between two readings of the replica count")
    out: str = opt("reports/autoscale", "where autoscale.json, autoscale.png and these options go")


def replicas_now(metrics_url: str) -> float | None:
    """semgen_backend_replicas of the forward application; None before the gateway has set it."""
    return next((value for labels, value in metric_samples(metrics_url, "semgen_backend_replicas")
                 if labels.get("application") == FORWARD), None)


async def load(address: str, ramp: tuple[int, ...], phase_s: float, png: bytes) -> tuple[list, list]:
    """((end time, status) of every call, (end time, status, details) of those that failed); `ramp[i]` callers
    during phase i, each calling until its phase ends."""
    import grpc

    from serving.core.protos import pyramid_pb2, pyramid_pb2_grpc

    done: list[tuple[float, str]] = []
    failed: list[tuple[float, str, str]] = []
    seed = iter(range(10**9))
    async with grpc.aio.insecure_channel(address) as channel:
        generate = pyramid_pb2_grpc.PyramidServiceStub(channel).Generate

        async def caller(until: float) -> None:
            while time.monotonic() < until:
                request = pyramid_pb2.GenerateRequest(image=png, level=LEVEL, num_samples=1, seed=next(seed))
                try:
                    await generate(request, timeout=60)
                    done.append((time.monotonic(), "OK"))
                except grpc.aio.AioRpcError as e:
                    done.append((time.monotonic(), e.code().name))
                    failed.append((time.monotonic(), e.code().name, e.details()))

        for concurrency in ramp:
            until = time.monotonic() + phase_s
            await asyncio.gather(*(caller(until) for _ in range(concurrency)))
    return done, failed


def summarize(ramp: tuple[int, ...], phase_s: float, start: float, trace: list[tuple[float, float]],
              calls: list[tuple[float, str]]) -> dict:
    """Per phase: OK calls/s, mean replicas over the readings, calls/s per replica, OK calls/s while each replica
    count ran (`by_replicas`, from the readings' intervals), and the seconds from the phase's start to the first
    reading at a new replica count."""
    ok_times = sorted(t for t, code in calls if code == "OK")

    def ok_between(t0: float, t1: float) -> int:  # OK calls that ended in [t0, t1)
        return bisect.bisect_left(ok_times, t1) - bisect.bisect_left(ok_times, t0)

    phases = []
    for i, concurrency in enumerate(ramp):
        lo, hi = start + i * phase_s, start + (i + 1) * phase_s
        readings = [(t, n) for t, n in trace if lo <= t < hi]
        ok = ok_between(lo, hi)
        spans: dict[float, list[float]] = {}  # replicas -> [seconds, OK calls]
        for (t0, n), (t1, _) in zip(readings, readings[1:]):
            span = spans.setdefault(n, [0.0, 0])
            span[0] += t1 - t0
            span[1] += ok_between(t0, t1)
        mean = sum(n for _, n in readings) / len(readings) if readings else 0.0
        before = next((n for t, n in reversed(trace) if t < lo), readings[0][1] if readings else 0.0)
        change = next(((t - lo, n) for t, n in readings if n != before), None)
        phases.append({"concurrency": concurrency, "calls_per_s": round(ok / phase_s, 2),
                       "errors": dict(collections.Counter(c for t, c in calls if lo <= t < hi and c != "OK")),
                       "mean_replicas": round(mean, 2),
                       "calls_per_s_per_replica": round(ok / phase_s / mean, 2) if mean else None,
                       "by_replicas": {f"{n:g}": round(c / d, 2) for n, (d, c) in sorted(spans.items()) if d},
                       "replicas_from": before, "replicas_to": change[1] if change else before,
                       "changed_after_s": round(change[0], 1) if change else None})
    # the replica count over time, as its steps: the first reading, each change, the last reading
    steps = [(t, n) for k, (t, n) in enumerate(trace) if k in (0, len(trace) - 1) or n != trace[k - 1][1]]
    return {"phases": phases, "replicas_over_time_s": [[round(t - start, 2), n] for t, n in steps]}


def bench_autoscale(opts: AutoscaleBench, progress: Callable[[str], None]) -> dict:
    from serving.bench.inprocess import reference

    export_onnx(opts.models, opts.onnx_dir)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    trace: list[tuple[float, float]] = []
    stop = threading.Event()
    with loopback_cluster() as cluster, server_process(
            ["--models", opts.models, "--onnx-dir", opts.onnx_dir, "--log-level", "WARNING", "--engine", "ray",
             "--ray-address", cluster.address, "--ray-replicas", "1", "--ray-max-replicas", "2",
             "--ray-replica-cpus", str(opts.replica_cpus), "--max-batch", str(opts.max_batch),
             "--ray-upscale-delay-s", str(opts.upscale_delay_s),
             "--ray-downscale-delay-s", str(opts.downscale_delay_s)], name="server --engine ray") as server:

        def watch() -> None:
            while not stop.wait(opts.sample_s):
                if (n := replicas_now(server.metrics_url)) is not None:
                    trace.append((time.monotonic(), n))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.monotonic()
        progress(f"ramp {opts.ramp}, {opts.phase_s:g} s each")
        calls, failed = asyncio.run(load(server.address, opts.ramp, opts.phase_s, reference(0)[0]))
        stop.set()
        watcher.join()
    result = {"nodes": 2, "cpus_per_node": 1, "min_replicas": 1, "max_replicas": 2,
              **{k: getattr(opts, k) for k in ("ramp", "phase_s", "max_batch", "upscale_delay_s", "downscale_delay_s",
                                               "replica_cpus")},
              **summarize(opts.ramp, opts.phase_s, start, trace, calls),
              "failures": [[round(t - start, 2), code, details] for t, code, details in failed[:20]]}
    for phase in result["phases"]:
        progress(json.dumps(phase))
    phases = result["phases"]
    result["scaled_up"] = any(p["replicas_to"] == 2 for p in phases)
    result["scaled_down"] = len(phases) > 1 and phases[-1]["replicas_to"] == 1
    result["passed"] = result["scaled_up"] and result["scaled_down"] and not any(p["errors"] for p in phases)
    (out / "autoscale.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, calls, start, out / "autoscale.png")
    return result


def plot(result: dict, calls: list[tuple[float, str]], start: float, path: Path, bucket_s: float = 5.0) -> None:
    """Forward replicas over time (steps) above OK calls/s in buckets of `bucket_s`, with the ramp's phases."""
    from matplotlib.figure import Figure

    ramp, phase_s = result["ramp"], result["phase_s"]
    steps = result["replicas_over_time_s"]
    end = max([t for t, _ in steps] + [0.0])
    buckets = [0] * (int(end // bucket_s) + 1)
    for t, code in calls:
        if code == "OK" and 0 <= (k := int((t - start) // bucket_s)) < len(buckets):
            buckets[k] += 1
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.step([t for t, _ in steps], [n for _, n in steps], where="post")
    top.set(ylabel="forward replicas", ylim=(0, 2.5),
            title=f"Ray Serve autoscaling on 2 nodes, ramp {ramp} calls in flight")
    bottom.bar([k * bucket_s for k in range(len(buckets))], [b / bucket_s for b in buckets], width=bucket_s,
               align="edge", color="tab:blue")
    bottom.set(xlabel="s", ylabel="Generate calls/s")
    for ax in (top, bottom):
        for i in range(1, len(ramp)):
            ax.axvline(i * phase_s, color="grey", linestyle=":")
    fig.savefig(path, bbox_inches="tight")
