"""`semgen serve --engine ray --ray-address` joining a cluster it did not start: two Ray nodes on loopback (1 CPU
each, with job agents; serving/bench/cluster.py), the replicas across both, Sample served, a node lost under load,
a batch job submitted to Ray Jobs, killed and resumed, and the cluster torn down with nothing of it left running."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest

from random_bundles import make_random_bundle, make_random_semantics_bundle
from semgen.bundle import Bundle
from serving.bench.batch_checks import records, wait_for_work
from serving.bench.cluster import loopback_cluster
from serving.bench.process import metric_samples
from serving.bench.ray_jobs import RayJobRun, job_entrypoint, run_to_end
from serving.ray.cluster import is_loopback
from serving.semantics.client import SemanticsClient, mask_array
from servingkit import serve_subprocess

SIZE = 32
ITEMS = 400  # Sample requests of the Ray Jobs test: enough that a kill lands mid-job


def ray_processes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if any(part in " ".join(p.info["cmdline"] or []) for part in ("raylet", "gcs_server", "ray/dashboard"))}


@pytest.fixture(scope="module")
def cluster():
    """A two-node cluster on loopback; afterwards, every raylet, GCS and dashboard process it started is gone."""
    before = ray_processes()
    try:
        with loopback_cluster() as made:
            yield made
    finally:
        left = psutil.wait_procs([psutil.Process(p) for p in ray_processes() - before if psutil.pid_exists(p)],
                                 timeout=30)[1]
        assert not left, f"left running: {left}"


def test_loopback_addresses_are_recognised():
    assert all(is_loopback(a) for a in ("127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379"))
    assert not any(is_loopback(a) for a in ("10.0.0.5:6379", "auto", "ray://head.example:10001"))


def test_the_gateway_serves_from_a_two_node_cluster_on_loopback(cluster, tmp_path):
    """Two forward replicas and one jobs replica of 0.5 CPU: 1.5 CPUs, more than either 1-CPU node holds, so the
    replicas run on both nodes. They open the bundle and its export from their node's cache, unpacked from the
    object store (the nodes share this machine's disk, and so one cache: one unpacked copy), and keep user heads in
    folders of their own: a head fitted on the jobs replica reaches the forward replicas through the heads mirror,
    lands in the gateway's --heads-dir, and a new gateway serves it again."""
    models = make_random_semantics_bundle(make_random_bundle(tmp_path / "models", image_size=SIZE), image_size=SIZE)
    cache, heads = tmp_path / "node-cache", tmp_path / "heads"
    args = ["--models", str(models), "--onnx-dir", str(tmp_path / "onnx"), "--heads-dir", str(heads),
            "--engine", "ray", "--ray-address", cluster.address, "--ray-replicas", "2", "--ray-replica-cpus", "0.5",
            "--ray-bundle-cache", str(cache)]
    halves = np.zeros((2, SIZE, SIZE), np.uint8)
    halves[:, : SIZE // 2] = 1
    with serve_subprocess(args) as server, SemanticsClient(server.address, timeout=120) as client:
        replies = [client.sample(seeds=[i, i + 1], head="lse") for i in range(6)]  # over both forward replicas
        again = client.sample(seeds=[0, 1], head="lse")
        ws = np.asarray(replies[0].latents.values, np.float32).reshape(tuple(replies[0].latents.shape))
        client.fit_head("mine", ws, list(halves), ["bottom", "top"], seed=1, iterations=30)
        fitted = [client.sample(latents=ws, head="mine") for _ in range(6)]
    assert all(len(r.images) == 2 and len(r.masks) == 2 for r in replies)
    assert list(again.images) == list(replies[0].images)  # the same bytes from whichever replica answered
    assert {mask_array(m).shape for r in replies for m in r.masks} == {(SIZE, SIZE)}
    assert all(list(r.masks) == list(fitted[0].masks) and tuple(r.class_names) == ("bottom", "top") for r in fitted)
    (copy,) = [p for p in cache.iterdir() if not p.name.startswith("heads-")]
    assert Bundle(copy / "models").fingerprint() == Bundle(models).fingerprint()
    assert Bundle(copy / "models").exported_onnx(copy / "onnx").is_dir()
    own = sorted(cache.glob("heads-*"))
    assert len(own) == 3 and all((folder / "mine" / "config.json").is_file() for folder in own)  # 3 replicas
    assert (heads / "mine" / "config.json").is_file()  # the gateway's record
    with serve_subprocess(args) as server, SemanticsClient(server.address, timeout=120) as client:
        assert "mine" in [h.name for h in client.list_heads()]
        assert list(client.sample(latents=ws, head="mine").masks) == list(fitted[0].masks)


def scrape(metrics_url: str, name: str) -> float:
    (sample,) = metric_samples(metrics_url, name)
    return sample[1]


def readyz(http_url: str) -> str:
    with urllib.request.urlopen(f"{http_url}/readyz", timeout=10) as reply:
        return reply.read().decode().strip()


def test_a_node_lost_under_load_fails_only_its_calls_and_the_rest_go_on(cluster, tmp_path):
    """Four callers keep Sample busy; the worker node's processes are killed. Calls in flight there answer
    UNAVAILABLE (never INTERNAL, never a hang), the later ones are served by what runs on the head node, /readyz
    stays 200 and says what capacity is lost; a node added back gets the lost replica again, and /readyz says
    "ready" once more. The times to five OK calls in a row and to full capacity are printed."""
    models = make_random_semantics_bundle(make_random_bundle(tmp_path / "models", image_size=SIZE), image_size=SIZE)
    args = ["--models", str(models), "--onnx-dir", str(tmp_path / "onnx"), "--heads-dir", str(tmp_path / "heads"),
            "--engine", "ray", "--ray-address", cluster.address, "--ray-replicas", "2", "--ray-replica-cpus", "0.5",
            "--ray-bundle-cache", str(tmp_path / "cache")]
    records, stop = [], threading.Event()

    def caller(address: str, k: int) -> None:
        with SemanticsClient(address, timeout=30) as client:
            while not stop.is_set():
                try:
                    client.sample(seeds=[k], head="lse")
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                records.append((time.monotonic(), code))

    with serve_subprocess(args) as server:
        assert readyz(server.http_url) == "ready"
        callers = [threading.Thread(target=caller, args=(server.address, k)) for k in range(4)]
        for t in callers:
            t.start()
        time.sleep(3)
        lost = time.monotonic()
        cluster.tell("remove")
        time.sleep(15)
        degraded = readyz(server.http_url)  # 200 all the while: urlopen raises on any other status
        flagged = scrape(server.metrics_url, "semgen_backend_degraded")
        stop.set()
        for t in callers:
            t.join(60)
        cluster.tell("add")
        back = time.monotonic()
        while (state := readyz(server.http_url)) != "ready" and time.monotonic() - back < 120:
            time.sleep(0.5)
        full = time.monotonic() - back
        time.sleep(1.5)  # the watch sets the gauge on its next look
        scrape_after = scrape(server.metrics_url, "semgen_backend_degraded")
        with SemanticsClient(server.address, timeout=30) as client:
            later = [client.sample(seeds=[k], head="lse") for k in range(5)]
    codes = {code for _, code in records}
    assert codes <= {"OK", "UNAVAILABLE"}, codes
    assert sum(code == "OK" for t, code in records if t < lost) > 0 and len(later) == 5
    assert degraded.startswith("ready (degraded: semgen-") and state == "ready", (degraded, state)
    assert (flagged, scrape_after) == (1.0, 0.0)
    after = [(t, code) for t, code in sorted(records) if t >= lost]
    streak = next(i for i in range(len(after)) if all(code == "OK" for _, code in after[i:i + 5]))
    print(f"node lost: {sum(c != 'OK' for _, c in after)} of {len(after)} calls after it failed UNAVAILABLE; "
          f"5 OK in a row {after[streak][0] - lost:.2f} s after the loss; /readyz said {degraded!r}; "
          f"full capacity {full:.1f} s after a node came back")


def test_a_batch_job_submitted_to_ray_jobs_is_killed_twice_and_resumes_with_the_same_bytes(cluster, tmp_path):
    """`ray job submit -- semgen batch --ray --ray-address auto …` on the cluster: stopped with Ray's `ray job stop`
    once it has recorded an item, its driver SIGKILLed on the second submission, the third finishes it. Every item
    is recorded once, and the outputs are the bytes of the same job run to its end by a driver that joined the
    cluster by its address."""
    from export.onnx import ensure_exported
    from ray.job_submission import JobSubmissionClient

    models = make_random_semantics_bundle(make_random_bundle(tmp_path / "models", image_size=SIZE), image_size=SIZE)
    onnx = tmp_path / "onnx"
    ensure_exported(models, onnx)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s{i:03d}", "rpc": "Sample", "seeds": [i, i + 1], "head": "lse"})
                                + "\n" for i in range(ITEMS)))
    client = JobSubmissionClient(cluster.dashboard)
    out, kinds = tmp_path / "job", []
    entrypoint = job_entrypoint(manifest, out, str(models), str(onnx), 2)
    for hard in (False, True):
        run = RayJobRun(client, entrypoint, out, hard=hard)
        wait_for_work(run, out, len(records(out)))
        assert run.running(), f"the job ended before it could be killed: {client.get_job_logs(run.id)[-2000:]}"
        kinds.append(run.kill())
        assert run.end() in ("STOPPED", "FAILED")
    partial = len(records(out))
    summary = run_to_end(client, entrypoint, out)
    direct = subprocess.run([sys.executable, "-m", "semgen_cli", "batch", "--manifest", str(manifest), "--out",
                             str(tmp_path / "direct"), "--no-progress", "--ray", "--ray-address", cluster.address,
                             "--models", str(models), "--onnx-dir", str(onnx), "--concurrency", "2"],
                            capture_output=True, text=True, timeout=600)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert kinds == ["ray job stop", "SIGKILL of the driver"] and 0 < partial < ITEMS
    assert (summary["ok"], summary["missing"], summary["this_run"]["items"]) == (ITEMS, 0, ITEMS - partial)
    keys = [r["key"] for r in records(out, all_lines=True)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == ITEMS
    want = {p.name: p.read_bytes() for p in (tmp_path / "direct" / "outputs").iterdir()}
    assert len(want) == 4 * ITEMS and {p.name: p.read_bytes() for p in (out / "outputs").iterdir()} == want
