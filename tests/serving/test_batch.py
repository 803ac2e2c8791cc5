"""`semgen batch`: manifests and their errors, the job folder, retries, kills and Ctrl-C, and Ray Data against the
embedded engine's bytes, on the bundled models."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from serving.batch.manifest import FOLDER_OPS, ManifestError, folder_items, read_manifest
from serving.batch.online import Caller, RetryPolicy, open_aio_channel
from serving.batch.store import JobFolder, Result
from serving.bench.batch import BatchBench, bench_batch
from serving.bench.catalogue import png
from serving.core.protos import pyramid_pb2

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "artifacts"


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def generate_manifest(folder: Path, n: int, refs: int = 4) -> Path:
    for r in range(refs):
        (folder / f"ref{r}.png").write_bytes(png(r))
    return write_lines(folder / "jobs.jsonl", [
        {"id": f"g{i:03d}", "rpc": "Generate", "image": f"ref{i % refs}.png", "level": "conv4", "num_samples": 2,
         "seed": i} for i in range(n)])


def batch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semgen_cli", "batch", "--no-progress", *args], capture_output=True,
                          text=True, cwd=ROOT, **kwargs)


def outputs_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "outputs").iterdir()}


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ---- the input ------------------------------------------------------------------------------------------

def test_every_bad_line_is_reported_with_its_number_before_any_work(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    good = {"id": "a", "rpc": "Generate", "image": "a.png", "level": "conv5"}
    manifest = write_lines(tmp_path / "bad.jsonl", [
        good, '{"rpc": "Generate", "image": "a.png"', {"rpc": "Paint"}, {"rpc": "Generate", "image": "missing.png"},
        {"rpc": "Generate", "image": "a.png", "levle": "conv5"}, {"rpc": "Generate", "num_samples": "four"},
        {"rpc": "Repaint", "image": "a.png", "region": {"pgn": "a.png"}}, {"id": "a/../b", "rpc": "Generate"},
        good, "", {"rpc": "Generate", "image": "a.png"}, {"rpc": "Generate", "image": "a.png"}])
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    assert caught.value.problems == [
        "line 2: not JSON: Expecting ',' delimiter at column 37",
        "line 3: rpc: unknown RPC 'Paint'; expected one of Generate, Repaint, Composite, Sample, Segment, "
        "SampleConditional, EditSemantics, Imagine, Manipulate",
        f"line 4: image: cannot read '{tmp_path / 'missing.png'}': No such file or directory",
        "line 5: levle: no such field in GenerateRequest; expected one of image, level, num_samples, seed, "
        "class_index, class_name, level_masks",
        "line 6: num_samples: invalid literal for int() with base 10: 'four'.",
        "line 7: region.pgn: no such field in Mask; expected one of png, array",
        "line 8: id: 'a/../b' is not a name of 1-128 letters, digits, '.', '_' or '-' (it names the output files)",
        "line 9: id: 'a' repeats line 1",
        "line 12: the same request as line 11",
    ]
    # the command says the same and starts nothing
    done = batch("--manifest", str(manifest), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "9 bad line(s)" in done.stderr and "line 12: the same request" in done.stderr
    assert not (tmp_path / "out").exists()
    checked = batch("--manifest", str(write_lines(tmp_path / "ok.jsonl", [good])), "--check")
    assert checked.returncode == 0 and checked.stdout.strip() == "1 requests OK"


def test_a_folder_of_images_runs_through_one_template(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt", "odd name.png"):
        (tmp_path / name).write_bytes(png(len(name)))
    items = folder_items(tmp_path, "generate", {"level": "conv3", "num_samples": 2, "seed": 5})
    assert [(i.rpc, i.key.split("-")[0]) for i in items] == [("Generate", "a"), ("Generate", "b"),
                                                             ("Generate", "generate")]  # no id from "odd name"
    assert items[1].fields["image"] == str(tmp_path / "b.png") and items[1].request().num_samples == 2
    assert items[1].request().image == (tmp_path / "b.png").read_bytes() and items[1].seed == 5
    assert folder_items(tmp_path, "imagine", {})[0].request().reference_png == (tmp_path / "a.jpg").read_bytes()
    with pytest.raises(ManifestError, match="b.png: levle: no such field"):
        folder_items(tmp_path, "generate", {"levle": "conv3"})
    with pytest.raises(ManifestError, match="op: unknown 'paint'"):
        folder_items(tmp_path, "paint", {})
    assert set(FOLDER_OPS) == {"generate", "repaint", "composite", "imagine"}


def test_the_job_folder_drops_a_torn_record_retryable_failures_and_temporary_files(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    items = read_manifest(write_lines(tmp_path / "m.jsonl", [
        {"id": f"i{k}", "rpc": "Generate", "image": "a.png", "seed": k} for k in range(4)]))
    folder = JobFolder(tmp_path / "out")
    folder.write(Result(items[0], "OK", [("images", png(1)), ("images", png(2))]))
    folder.write(Result(items[1], "INVALID_ARGUMENT", error="level: unknown"))
    folder.write(Result(items[2], "UNAVAILABLE", error="down", attempts=5))
    folder.close()
    assert sorted(outputs_of(tmp_path / "out")) == ["i0_s0_images_00.png", "i0_s0_images_01.png"]
    with open(tmp_path / "out" / "results.jsonl", "a") as f:
        f.write('{"key": "i3", "line": 4, "rpc": "Gen')  # killed mid-record
    (tmp_path / "out" / "outputs" / "i3_s3_images_00.png.tmp").write_bytes(b"half")
    reopened = JobFolder(tmp_path / "out")
    # done: the OK item and the one the server refused; the UNAVAILABLE one and the torn one run again
    assert reopened.done == {"i0", "i1"}
    assert [r["key"] for r in records_of(tmp_path / "out")] == ["i0", "i1"]
    assert sorted(outputs_of(tmp_path / "out")) == ["i0_s0_images_00.png", "i0_s0_images_01.png"]
    summary = reopened.summary(items, time.perf_counter(), 0, False)
    assert (summary["ok"], summary["failed"], summary["missing"], summary["outputs"]) == (1, 1, 2, 2)
    reopened.close()


def test_a_second_run_on_a_folder_in_use_is_refused_until_the_first_ends(tmp_path):
    """A job resubmitted (to Ray Jobs, say) while the stopped run still writes: refused, naming --out; the lock
    goes with the first run, even when it is killed."""
    first = JobFolder(tmp_path / "out")
    with pytest.raises(ValueError, match=r"--out .*out: another batch job is writing to this folder"):
        JobFolder(tmp_path / "out")
    (tmp_path / "m.jsonl").write_text('{"rpc": "Generate", "image": "a.png"}\n')
    (tmp_path / "a.png").write_bytes(png(0))
    refused = batch("--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"), "--address", "x:1")
    assert refused.returncode == 2 and "another batch job is writing" in refused.stderr
    first.close()
    hold = (f"import sys; from serving.batch.store import JobFolder; held = JobFolder({str(tmp_path / 'out')!r}); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match="another batch job"):
        JobFolder(tmp_path / "out")
    holder.kill()
    holder.wait()
    JobFolder(tmp_path / "out").close()  # a killed holder leaves no lock behind


# ---- retries ------------------------------------------------------------------------------------------

class FlakyPyramid:
    """A PyramidService.Generate whose answer depends on the seed: 1 is UNAVAILABLE twice then answers, 2 is
    INVALID_ARGUMENT, 3 is always RESOURCE_EXHAUSTED, 4 is too slow once (DEADLINE_EXCEEDED), then answers."""

    def __init__(self):
        self.calls: dict[int, int] = {}

    async def generate(self, request: pyramid_pb2.GenerateRequest, context):
        n = self.calls[request.seed] = self.calls.get(request.seed, 0) + 1
        if request.seed == 1 and n <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model: still loading")
        if request.seed == 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "level: unknown level 'conv9'")
        if request.seed == 3:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if request.seed == 4 and n == 1:
            await asyncio.sleep(2.0)
        return pyramid_pb2.GenerateResponse(images=[png(request.seed)], level="conv5", width=64, height=64)


async def call_flaky(items):
    service = FlakyPyramid()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("semgen.v1.PyramidService", {
        "Generate": grpc.unary_unary_rpc_method_handler(
            service.generate, request_deserializer=pyramid_pb2.GenerateRequest.FromString,
            response_serializer=pyramid_pb2.GenerateResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    try:
        async with open_aio_channel(f"127.0.0.1:{port}") as channel:
            caller = Caller(channel, timeout_s=0.5, retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.5,
                                                                      max_backoff_s=1.0), sleep=sleep)
            results = [await caller(item) for item in items]
    finally:
        await server.stop(None)
    return results, service.calls, waits


def test_retries_back_off_with_bounded_jitter_and_never_repeat_invalid_argument(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    items = read_manifest(write_lines(tmp_path / "m.jsonl", [
        {"id": f"s{seed}", "rpc": "Generate", "image": "a.png", "seed": seed} for seed in (1, 2, 3, 4)]))
    results, calls, waits = asyncio.run(call_flaky(items))
    assert [(r.status, r.attempts) for r in results] == [
        ("OK", 3), ("INVALID_ARGUMENT", 1), ("RESOURCE_EXHAUSTED", 4), ("OK", 2)]
    assert calls == {1: 3, 2: 1, 3: 4, 4: 2}  # INVALID_ARGUMENT was sent once
    assert results[0].outputs == [("images", png(1))] and results[1].error == "level: unknown level 'conv9'"
    # waits: 2 (seed 1) + 3 (seed 3) + 1 (seed 4), each under the capped exponential curve, seeded per item
    caps = [0.5, 1.0, 0.5, 1.0, 1.0, 0.5]
    assert len(waits) == 6 and all(0 <= w <= cap for w, cap in zip(waits, caps)) and len(set(waits)) == 6
    assert asyncio.run(call_flaky(items))[2] == waits


# ---- on the bundled models: kills, Ctrl-C, Ray --------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    from export.onnx import ensure_exported

    folder = tmp_path_factory.mktemp("onnx")
    ensure_exported(str(MODELS), str(folder))
    return folder


@pytest.fixture(scope="module")
def server(onnx_dir, tmp_path_factory):
    """The bundled models served in this process, on a unix socket."""
    from serving.options import ServeOptions
    from serving.server_thread import ServerThread

    folder = tmp_path_factory.mktemp("server")
    thread = ServerThread(ServeOptions(models=str(MODELS), onnx_dir=str(onnx_dir), port=0, metrics_port=0,
                                       heads_dir=str(folder / "heads"), log_level="WARNING"),
                          f"unix://{folder}/grpc.sock")
    yield thread
    thread.close()


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.jsonl").exists() and len((out / "results.jsonl").read_text().splitlines()) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"the job did not reach {n} records")


def test_a_job_killed_at_three_points_resumes_with_every_output_once_and_identical(server, tmp_path):
    manifest = generate_manifest(tmp_path, 40)
    reference = batch("--manifest", str(manifest), "--out", str(tmp_path / "ref"), "--address", server.address)
    assert reference.returncode == 0, reference.stderr
    expected = outputs_of(tmp_path / "ref")
    assert len(expected) == 80
    out, args = tmp_path / "job", ["--manifest", str(manifest), "--address", server.address, "--concurrency", "2"]
    cmd = [sys.executable, "-m", "semgen_cli", "batch", "--no-progress", "--out", str(out), *args]
    for records in (0, 5, 20):  # in start-up, early, in the middle
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc.stderr.readline()  # "40 requests, N done before, M to run"
        if records:
            wait_for_records(out, records, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        proc.stderr.close()
        assert len(records_of(out)) < 40
    resumed = batch("--out", str(out), *args)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["ok"] == 40 and summary["missing"] == 0 and summary["this_run"]["items"] < 40
    assert outputs_of(out) == expected  # nothing lost, nothing extra, the same bytes
    keys = [r["key"] for r in records_of(out)]
    assert sorted(keys) == sorted(set(keys)) == [f"g{i:03d}" for i in range(40)]
    again = batch("--out", str(out), *args)  # a finished job: nothing to run
    assert json.loads(again.stdout.splitlines()[-1])["this_run"]["items"] == 0


def test_ctrl_c_finishes_the_requests_in_flight_and_the_job_resumes(server, tmp_path):
    manifest = generate_manifest(tmp_path, 60)
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "semgen_cli", "batch", "--no-progress", "--manifest", str(manifest), "--out",
           str(out), "--address", server.address, "--concurrency", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(out, 4, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "finishing the requests in flight" in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["stopped_early"] and 4 <= summary["ok"] < 60 and summary["failed"] == 0
    records = records_of(out)
    # every request that started was finished and recorded: no output without its record
    assert set(outputs_of(out)) == {name for r in records for name in r["outputs"]}
    resumed = batch("--out", str(out), "--manifest", str(manifest), "--address", server.address)
    assert json.loads(resumed.stdout.splitlines()[-1])["ok"] == 60


def test_a_refused_request_is_recorded_and_the_job_goes_on(server, tmp_path):
    manifest = generate_manifest(tmp_path, 3)
    with open(manifest, "a") as f:
        f.write(json.dumps({"id": "bad", "rpc": "Generate", "image": "ref0.png", "level": "conv9"}) + "\n")
    done = batch("--manifest", str(manifest), "--out", str(tmp_path / "out"), "--address", server.address)
    assert done.returncode == 1  # something failed: scripts notice
    bad = next(r for r in records_of(tmp_path / "out") if r["key"] == "bad")
    assert bad["status"] == "INVALID_ARGUMENT" and bad["attempts"] == 1 and bad["error"].startswith("level: ")
    assert json.loads(done.stdout.splitlines()[-1])["codes"] == {"OK": 3, "INVALID_ARGUMENT": 1}


def test_ray_data_writes_the_bytes_of_the_online_job(server, onnx_dir, tmp_path):
    for r in range(2):
        (tmp_path / f"ref{r}.png").write_bytes(png(r))
    manifest = write_lines(tmp_path / "mixed.jsonl", [
        {"rpc": "Generate", "image": "ref0.png", "level": "conv3", "num_samples": 2, "seed": 1},
        {"rpc": "Composite", "image": "ref0.png", "object_image": "ref1.png",
         "box": {"left": 8, "top": 8, "width": 24, "height": 24}, "level": "conv2", "num_samples": 1, "seed": 2},
        {"rpc": "Sample", "seeds": [3, 4], "head": "lse"},
        {"rpc": "Manipulate", "seeds": {"values": [5]}, "edits": [{"attribute": "time_of_day", "strength": 2}]},
        {"id": "bad", "rpc": "Generate", "image": "ref0.png", "level": "conv9"}])
    online = batch("--manifest", str(manifest), "--out", str(tmp_path / "online"), "--address", server.address)
    on_ray = batch("--manifest", str(manifest), "--out", str(tmp_path / "ray"), "--ray", "--models", str(MODELS),
                   "--onnx-dir", str(onnx_dir), "--concurrency", "1", timeout=300)
    assert online.returncode == on_ray.returncode == 1, on_ray.stderr[-3000:]
    expected = outputs_of(tmp_path / "online")
    assert len(expected) == 2 + 1 + 4 + 1 and outputs_of(tmp_path / "ray") == expected
    statuses = {r["key"]: (r["status"], r.get("error")) for r in records_of(tmp_path / "online")}
    assert {r["key"]: (r["status"], r.get("error")) for r in records_of(tmp_path / "ray")} == statuses


def test_bench_batch_kills_a_job_at_random_moments_and_loses_nothing(onnx_dir, tmp_path):
    result = bench_batch(BatchBench(models=str(MODELS), requests=40, concurrency=4, ray_actors=(), ray_replicas=(),
                                    cluster=False,
                                    kills=4, kill_requests=60, out=str(tmp_path / "report"), onnx_dir=str(onnx_dir)),
                         progress=lambda message: None)
    assert result["passed"] and result["lost"] == result["duplicated"] == result["mismatched"] == 0
    assert result["kill_test"]["kills"] == 4 and result["kill_test"]["outputs"] == 60
    assert result["jobs"]["online_embedded"]["ok"] == 40 and result["jobs"]["online_embedded"]["images_per_s"] > 0
    assert json.loads((tmp_path / "report" / "batch.json").read_text())["kill_test"] == result["kill_test"]
    assert (tmp_path / "report" / "batch.png").stat().st_size > 5_000


def test_a_ray_job_without_the_bundles_export_names_the_command_before_ray_starts(tmp_path):
    manifest = generate_manifest(tmp_path, 1)
    done = batch("--manifest", str(manifest), "--out", str(tmp_path / "out"), "--ray", "--models", str(MODELS),
                 "--onnx-dir", str(tmp_path / "no-export"))
    assert done.returncode == 2 and "run `semgen export onnx --models" in done.stderr
