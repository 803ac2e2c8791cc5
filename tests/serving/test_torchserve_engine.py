"""`semgen serve --engine torchserve` on a real TorchServe (Java 17): the same request with the same
seed gives the same image bytes through both engines; jobs stream through it; when TorchServe dies,
calls get UNAVAILABLE and the gateway recovers once it is back; the batch metrics appear under the
embedded engine's names."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from random_bundles import make_random_bundle, make_random_semantics_bundle
from serving.core.healthcheck import check as health_check
from servingkit import serve_subprocess
from serving.core.channel import job_result
from serving.pyramid.client import SemgenClient
from serving.imagine.client import ImagineClient
from serving.semantics.client import SemanticsClient, latents_array
from serving.torchserve.process import java_available

pytestmark = pytest.mark.skipif(not java_available()[0], reason=java_available()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts_engine")
    models = make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)
    return root, models


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def requests(address):
    """The same calls on either engine: generate (2 references, batched concurrently), sample, edit, imagine."""
    with SemgenClient(address, timeout=120) as pyramid, SemanticsClient(address, timeout=120) as semantics, \
            ImagineClient(address, timeout=120) as imagine:
        threads = []
        generated = [None] * 4

        def generate(i):
            generated[i] = pyramid.generate(png(i % 2), level="conv3", num_samples=2, seed=i)

        for i in range(4):
            threads.append(threading.Thread(target=generate, args=(i,)))
            threads[-1].start()
        for t in threads:
            t.join()
        sampled = semantics.sample(seeds=[5, 6], head="lse")
        latent = latents_array(sampled.latents)[:1]
        edited = job_result(semantics.edit(latent, np.zeros((32, 32), np.uint8), head="lse", iterations=3,
                                           preview_every=1))
        variations = job_result(imagine.imagine(png(7), num_variations=2, seed=3, stage1_iterations=2,
                                                stage2_iterations=2))
    return generated, sampled, edited, variations


def fit_and_use_a_head(address) -> tuple:
    with SemanticsClient(address, timeout=120) as semantics:
        latents = latents_array(semantics.sample(seeds=[1, 2]).latents)
        masks = [np.eye(32, dtype=np.uint8)[::-1] * 1, np.tril(np.ones((32, 32), np.uint8))]
        semantics.fit_head("mine", latents, [encoded(m) for m in masks], ["ground", "sky"], iterations=3)
    return use_the_head(address)


def use_the_head(address) -> tuple:
    with SemanticsClient(address, timeout=120) as semantics:
        heads = {h.name: h.shots for h in semantics.list_heads()}
        reply = semantics.sample(seeds=[9], head="mine")
    return heads.get("mine"), list(reply.masks)


def encoded(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


def health_statuses(address: str, service: str, until: str, seconds: float) -> list[str]:
    """The service's health polled every 0.2 s: the distinct statuses seen, from the first change on, until `until`."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = health_check(address, service)
        if status != (seen[-1] if seen else "SERVING"):
            seen.append(status)
        if seen and status == until:
            break
        time.sleep(0.2)
    return seen


def test_same_bytes_through_torchserve_and_recovery(bundle):
    root, models = bundle
    common = ["--models", str(models), "--onnx-dir", str(root / "onnx"), "--heads-dir", str(root / "heads"),
              "--max-batch", "4", "--max-batch-delay-ms", "50"]
    with serve_subprocess(common) as embedded:
        expected = requests(embedded.address)
        fitted = fit_and_use_a_head(embedded.address)
    with serve_subprocess([*common, "--engine", "torchserve", "--torchserve-dir", str(root / "ts")]) as ts:
        got = requests(ts.address)
        for e, g in zip(expected[0], got[0]):
            assert e == g  # PNG bytes of Generate
        assert list(expected[1].images) == list(got[1].images) and list(expected[1].masks) == list(got[1].masks)
        assert list(expected[2].images) == list(got[2].images)  # SIE, streamed through TorchServe
        assert list(expected[3].images_png) == list(got[3].images_png)  # IMAGINE, streamed
        metrics = urllib.request.urlopen(ts.metrics_url, timeout=5).read().decode()
        assert re.search(r'semgen_batch_size_count\{model="pyramid"\} [1-9]', metrics)
        assert re.search(r'semgen_engine_compute_seconds_count\{op="generate"\} 4', metrics)
        assert re.search(r'semgen_engine_queue_seconds_count\{op="sample"\} 1', metrics)
        # the head FitHead saved on the embedded engine follows the user: TorchServe's workers read the same folder
        assert use_the_head(ts.address) == fitted and fitted[0] == 2

        # TorchServe dies: health goes NOT_SERVING, calls get UNAVAILABLE, then the supervisor brings it back,
        # health is SERVING again and calls succeed again
        assert health_check(ts.address, "semgen.v1.PyramidService") == "SERVING"
        subprocess.run(["pkill", "-9", "-f", str(root / "ts" / "run")], check=False)
        statuses = health_statuses(ts.address, "semgen.v1.PyramidService", until="SERVING", seconds=120)
        assert statuses[0] == "NOT_SERVING" and statuses[-1] == "SERVING"
        assert health_check(ts.address) == "SERVING"  # the whole server, too
        subprocess.run(["pkill", "-9", "-f", str(root / "ts" / "run")], check=False)
        with SemgenClient(ts.address, timeout=30) as client:
            with pytest.raises(grpc.RpcError) as error:
                client.generate(png(0), level="conv3", num_samples=2, seed=0)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "TorchServe" in error.value.details()
            deadline = time.monotonic() + 120
            while True:
                try:
                    assert client.generate(png(0), level="conv3", num_samples=2, seed=0) == expected[0][0]
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", str(root / "ts" / "run")], capture_output=True).stdout == b""


def test_torchserve_dies_with_a_killed_gateway_and_an_orphan_is_stopped(bundle, tmp_path):
    """SIGKILL of the gateway used to leave TorchServe (Java + workers, open ports) running, and the next
    gateway started a second one beside it."""
    root, models = bundle
    ts = tmp_path / "ts"
    args = ["--models", str(models), "--onnx-dir", str(root / "onnx"), "--heads-dir", str(root / "heads"),
            "--max-batch", "4", "--max-batch-delay-ms", "50", "--engine", "torchserve", "--torchserve-dir", str(ts)]
    with serve_subprocess(args) as gateway:
        assert running(ts)
        os.kill(gateway.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while running(ts) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not running(ts)  # the watchdog took TorchServe down with the gateway

    # an orphan that outlived its gateway (as a kill of the whole watchdog would leave): the next start stops it
    from serving.torchserve.process import stop_orphan

    orphan = subprocess.Popen([sys.executable, "-m", "serving.torchserve.watchdog", str(os.getpid()), "--",
                               "sleep", "300"], start_new_session=True)
    # Popen can return before the child has exec'd (its cmdline still empty); an orphan is long past that
    deadline = time.monotonic() + 10
    while b"serving.torchserve.watchdog" not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the orphan watchdog did not start"
        time.sleep(0.05)
    (ts / "run").mkdir(parents=True, exist_ok=True)
    (ts / "run" / "torchserve.pgid").write_text(f"{orphan.pid}\n")
    stop_orphan(ts / "run" / "torchserve.pgid")
    assert orphan.wait(timeout=10) == -signal.SIGKILL and not (ts / "run" / "torchserve.pgid").exists()


def running(ts) -> bool:
    return subprocess.run(["pgrep", "-f", str(ts / "run")], capture_output=True).stdout != b""


def test_a_cancelled_job_stops_in_the_torchserve_worker(bundle, tmp_path):
    """TorchServe cannot stop a handler: a cancelled Imagine used to run on in the worker (the imagine model
    serves one request at a time), and every later call waited behind it."""
    root, models = bundle
    args = ["--models", str(models), "--onnx-dir", str(root / "onnx"), "--heads-dir", str(root / "heads"),
            "--max-batch", "4", "--max-batch-delay-ms", "50", "--engine", "torchserve",
            "--torchserve-dir", str(tmp_path / "ts")]
    small = dict(num_variations=1, stage1_iterations=2, stage2_iterations=2)
    with serve_subprocess(args) as ts, ImagineClient(ts.address, timeout=300) as imagine:
        begun = time.monotonic()
        job_result(imagine.imagine(png(8), seed=4, **small))
        alone = time.monotonic() - begun  # a small job with the worker to itself
        events = imagine.imagine(png(7), num_variations=1, seed=3, stage1_iterations=5000, stage2_iterations=1)
        started, seen = time.monotonic(), []
        for event in events:
            seen.append(event.progress.iteration)
            if time.monotonic() - started > 3:
                break
        per_iteration = (time.monotonic() - started) / max(seen[-1], 1)
        events.cancel()
        left = per_iteration * (5000 - seen[-1])  # what the worker would still run uncancelled
        begun = time.monotonic()
        job_result(imagine.imagine(png(8), seed=4, **small))
        waited = time.monotonic() - begun
    # the small job waited for at most a few iterations of the cancelled one, not for its rest (`left`); both times
    # grow alike on a busy machine
    assert left > 10 and waited < alone + left / 2, (alone, left, waited)


def test_a_job_cancelled_before_its_first_event_stops_in_the_worker(bundle, tmp_path):
    """Found by `semgen bench soak`: the handler looked for the cancel marker only at a job's events, so an SCS
    cancelled in its candidate phase (no events) or while it waited in TorchServe's queue ran on, and small jobs
    behind it waited for minutes. Now the handler skips a job cancelled in the queue and stops one mid-phase."""
    root, models = bundle
    args = ["--models", str(models), "--onnx-dir", str(root / "onnx"), "--heads-dir", str(root / "heads"),
            "--engine", "torchserve", "--torchserve-dir", str(tmp_path / "ts"),
            "--max-candidates", "1024"]  # a candidate phase of seconds even on a fast machine
    target = np.zeros((32, 32), np.uint8)
    target[:16] = 1
    big = dict(num_samples=16, n_init=1024, iterations=2, preview_every=1, seed=2)
    with serve_subprocess(args) as ts, SemanticsClient(ts.address, timeout=300) as semantics:
        def small():
            begun = time.monotonic()
            job_result(semantics.sample_conditional(target, head="lse", num_samples=1, n_init=2, iterations=1))
            return time.monotonic() - begun

        alone = small()
        begun = time.monotonic()
        first = semantics.sample_conditional(target, head="lse", **big)
        next(iter(first))  # the first event comes after the whole candidate phase
        candidates = time.monotonic() - begun
        first.cancel()
        calls = [semantics.sample_conditional(target, head="lse", **big) for _ in range(3)]  # 1 runs, 2 queue
        time.sleep(min(1.0, candidates / 4))
        for call in calls:
            call.cancel()
        waited = small()
    # uncancelled, the small job would wait for three candidate phases; cancelled, for less than one (both grow
    # alike on a busy machine)
    assert candidates > 2 and waited < alone + candidates, (alone, candidates, waited)
