"""`semgen serve --engine ray` on a local Ray: a cancelled job stops on its replica; a head fitted on the jobs
replica serves on every forward replica; a replica that dies fails only the calls it had, the next ones succeed on the other, and the batch metrics keep the embedded engine's names. (The
bytes of every RPC against the embedded engine's: tests/serving/test_golden.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest

from random_bundles import make_random_bundle, make_random_semantics_bundle
from serving.core.channel import job_result
from serving.core.healthcheck import check as health_check
from serving.core.protos import pyramid_pb2, pyramid_pb2_grpc
from serving.bench.catalogue import png
from serving.options import ServeOptions
from serving.semantics.client import SemanticsClient, mask_array
from servingkit import serve_subprocess

SIZE = 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_engine")
    models = make_random_semantics_bundle(make_random_bundle(root / "models", image_size=SIZE), image_size=SIZE)
    args = ["--models", str(models), "--onnx-dir", str(root / "onnx"), "--heads-dir", str(root / "heads"),
            "--engine", "ray", "--ray-replicas", "2", "--ray-replica-cpus", "0.5", "--max-jobs", "1",
            "--max-batch", "4", "--max-batch-delay-ms", "20"]
    with serve_subprocess(args) as running:
        yield running


def test_the_ray_options_are_checked():
    with pytest.raises(ValueError, match="--ray-address goes with --engine ray"):
        ServeOptions(ray_address="auto").check()
    with pytest.raises(ValueError, match="--ray-replicas and --ray-job-replicas must be >= 1"):
        ServeOptions(engine="ray", ray_replicas=0).check()


def test_a_cancelled_job_stops_on_its_replica(server):
    """The jobs deployment runs one job at a time here: a small job after a cancelled big one waits for at most
    the big one's current step, not for the rest of it."""
    target = np.zeros((SIZE, SIZE), np.uint8)
    target[: SIZE // 2] = 1
    with SemanticsClient(server.address, timeout=300) as semantics:
        def small():
            begun = time.monotonic()
            job_result(semantics.sample_conditional(target, head="lse", num_samples=1, n_init=2, iterations=2))
            return time.monotonic() - begun

        alone = small()
        # as big as a request may be, so that it would run on for seconds after the cancel on a fast machine too
        big = semantics.sample_conditional(target, head="lse", num_samples=16, n_init=8, iterations=500,
                                           preview_every=1)
        started, seen = time.monotonic(), 0
        for event in big:
            seen = event.progress.iteration
            if time.monotonic() - started > 3:
                break
        per_iteration = (time.monotonic() - started) / max(seen, 1)
        big.cancel()
        waited = small()
    left = per_iteration * (500 - seen)  # what the replica would still run uncancelled
    # uncancelled, the small job would wait `left` more; both times grow alike on a busy machine
    assert left > 5 and waited < alone + left / 2, (alone, left, waited)


def test_a_head_fitted_on_the_jobs_replica_serves_on_every_forward_replica(server):
    with SemanticsClient(server.address, timeout=120) as client:
        shots = client.sample(seeds=[7, 8], head="lse")
        masks = [mask_array(png) % 3 for png in shots.masks]
        info = client.fit_head("water-3", shots.latents, masks, ["a", "b", "c"], seed=1, iterations=4)
        assert (info.name, info.kind, tuple(info.class_names), info.bundled, info.shots) == \
            ("water-3", "lse", ("a", "b", "c"), False, 2)
        # Ray spreads the calls over both forward replicas: each takes the head in from the shared folder
        first = [client.segment(shots.latents, "water-3") for _ in range(8)]
        assert all(r.masks == first[0].masks and tuple(r.class_names) == ("a", "b", "c") for r in first)
        assert {h.name: h.shots for h in client.list_heads()}["water-3"] == 2
        client.fit_head("water-3", shots.latents, masks, ["a", "b", "c", "d"], iterations=1, replace=True)
        second = [client.segment(shots.latents, "water-3") for _ in range(8)]
    assert all(r.masks == second[0].masks and tuple(r.class_names) == tuple("abcd") for r in second)
    assert second[0].masks != first[0].masks  # no replica kept the replaced head


def forward_replicas(server_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if any("ServeReplica:semgen-forward" in part for part in command_line(p))]


def command_line(process: psutil.Process) -> list[str]:
    """The process's command line; none for one that exited (a zombie, on a busy machine) while we looked."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


async def generate_while(address: str, seconds: float, kill_at: float, pid: int) -> tuple[list, float]:
    """4 callers send Generate for `seconds`; the replica `pid` is SIGKILLed after `kill_at` s. ((t, code), kill t)."""
    codes, begun = [], time.monotonic()
    killed = None
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pyramid_pb2_grpc.PyramidServiceStub(channel)

        async def caller(i: int):
            nonlocal killed
            while (t := time.monotonic() - begun) < seconds:
                if killed is None and t > kill_at:
                    killed = t
                    os.kill(pid, signal.SIGKILL)
                request = pyramid_pb2.GenerateRequest(image=png(i % 4, SIZE), level="conv3", num_samples=1, seed=i)
                try:
                    await stub.Generate(request, timeout=60)
                    codes.append((time.monotonic() - begun, "OK"))
                except grpc.aio.AioRpcError as e:
                    codes.append((time.monotonic() - begun, e.code().name))
                i += 4

        await asyncio.gather(*(caller(i) for i in range(4)))
    return codes, killed


def test_a_dead_replica_fails_only_its_calls_and_the_others_serve(server):
    replicas = forward_replicas(server.pid)
    assert len(replicas) == 2
    codes, killed = asyncio.run(generate_while(server.address, 12.0, 3.0, replicas[0].pid))
    assert {code for _, code in codes} <= {"OK", "UNAVAILABLE"}
    before = [code for t, code in codes if t < killed]
    after = [code for t, code in codes if t > killed + 3.0]
    assert before and set(before) == {"OK"} and after and set(after) == {"OK"}, codes
    assert health_check(server.address, "semgen.v1.PyramidService") == "SERVING"
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    # Ray Serve's batches, under the embedded engine's metric names
    batches = float(next(line.split()[-1] for line in metrics.splitlines()
                         if line.startswith('semgen_batch_size_count{model="pyramid"}')))
    assert 0 < batches <= len(codes)
    assert 'semgen_engine_compute_seconds_count{op="generate"}' in metrics
