"""`semgen bench serve`: what the gRPC server delivers against what this machine can do.

    semgen bench serve --json        # prints the result; writes reports/bench/serve.json and serve.png

1. In this process, the pipelines on ONNX Runtime run batches of `max_batch` requests back to back
   (`run_batch`, what the server's batcher calls): the limit of this machine, `inprocess.<method>`.
   Then ONNX Runtime against eager torch on identical rows, by batch size (`ort_over_eager.<batch>`).
2. One server at a time (`python -m serving.server` on loopback, one per engine): an asyncio gRPC
   load generator keeps c requests in flight for every concurrency c until `requests` are done or
   `seconds` have passed; throughput and p50/p95/p99 latency per (engine, method, concurrency).
`served_over_inprocess.<method>` = the embedded server's throughput at the highest concurrency /
the in-process throughput; `served_over_inprocess` is the lowest over the methods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import io
import itertools
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ORT_THREADS = 2  # the server's default --ort-threads; eager torch gets as many threads
LEVEL, HEAD, PSI = "conv3", "lse", 1.0  # what every Generate / Sample request asks for
PASSES = 3  # the in-process limit and the highest concurrency are measured this often (median)
START_TIMEOUT_S, STOP_GRACE_S = 180, 45  # the grace outlasts TorchServe's own 30 s stop
RATIO_KEYS = {"generate": "ort_over_eager", "sample": "ort_over_eager_sample"}


@dataclass(frozen=True)
class ServeBench:
    models: str = "artifacts"
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 256  # per (engine, method, concurrency) level; fewer make ramp-up and tail weigh
    seconds: float = 30.0  # cap per level
    max_batch: int = 8
    max_batch_delay_ms: float = 5.0
    engines: tuple[str, ...] = ("embedded", "torchserve")
    eager_batches: tuple[int, ...] = (1, 8, 32)
    out: str = "reports/bench"
    onnx_dir: str = "var/onnx"
    seed: int = 0  # the scene rendered as Generate's reference image


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summarize(latencies: list[float], codes: list[str], wall: float) -> dict:
    """One level: throughput = OK completions / wall seconds; nearest-rank percentiles of the OK
    latencies (seconds in, ms out; failures are often fast and would flatter them); errors by code."""
    ok = sorted(lat for lat, code in zip(latencies, codes) if code == "OK")

    def pct(q):
        return round(ok[max(math.ceil(q / 100 * len(ok)), 1) - 1] * 1000, 3) if ok else None

    errors = collections.Counter(code for code in codes if code != "OK")
    return {"requests": len(codes), "ok": len(ok), "seconds": round(wall, 3),
            "throughput": round(len(ok) / wall, 3) if wall > 0 else 0.0,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "errors": dict(sorted(errors.items()))}


def bundle_methods(models: str | Path) -> list[str]:
    m = Path(models)
    return [name for name, there in (("generate", (m / "pyramid").exists()),
                                     ("sample", (m / "stylegan").exists() and (m / "heads" / HEAD).exists())) if there]


def reference(seed: int, size: int = 64) -> tuple[bytes, np.ndarray]:
    """A rendered scene as PNG bytes (sent to the server) and as the array the server decodes."""
    from PIL import Image
    from semgen.data.scenes import render_scene

    buf = io.BytesIO()
    Image.fromarray(render_scene(seed, size).image).save(buf, format="PNG")
    return buf.getvalue(), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def op_args(method: str, i: int, image: np.ndarray, samples: int = 1) -> tuple[str, dict]:
    """Request i as the pipeline's (op, args): what the servicer hands the engine."""
    if method == "generate":
        return "generate", dict(image=image, levels={LEVEL: None}, num_samples=samples, seed=i, class_index=None)
    return "sample", dict(seeds=list(range(i, i + samples)), latents=None, psi=PSI, predictor=HEAD)


# ---- 1. in process --------------------------------------------------------------------------

def load_pipelines(models: str, onnx_dir: str, methods: list[str]) -> dict:
    from export.onnx import ensure_exported
    from semgen.pipelines.onnx_models import OnnxModels
    from semgen.pipelines.pyramid import PyramidPipeline
    from semgen.pipelines.semantics import SemanticsPipeline

    onnx = OnnxModels(ensure_exported(models, onnx_dir), threads=ORT_THREADS)  # the server's cache, too
    kinds = {"generate": PyramidPipeline, "sample": SemanticsPipeline}
    return {m: kinds[m].from_dir(models, onnx=onnx) for m in methods}


def inprocess_throughput(pipe, method: str, image: np.ndarray, requests: int, max_batch: int,
                         passes: int = PASSES) -> float:
    """Requests per second of `run_batch` over batches of max_batch one-sample requests (the median
    of `passes` passes: single passes on this shared machine vary by ±10 %)."""
    from semgen.pipelines.forward import run_batch

    def batch(lo):
        return [op_args(method, i, image) for i in range(lo, min(lo + max_batch, requests))]

    run_batch(pipe, batch(0))  # warm-up: sessions load, buffers get allocated
    rates = []
    for _ in range(passes):
        started = time.perf_counter()
        for lo in range(0, requests, max_batch):
            failed = [r for r in run_batch(pipe, batch(lo)) if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        rates.append(requests / (time.perf_counter() - started))
    return statistics.median(rates)


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ort_over_eager(pipe, method: str, image: np.ndarray, batches, repeats: int = 5) -> dict[int, float]:
    """Eager torch seconds / ONNX Runtime seconds of one `run` over the same rows, per batch size."""
    import torch

    eager = copy.copy(pipe)  # the same modules, with the forward passes on torch
    eager.onnx = None
    threads = torch.get_num_threads()
    torch.set_num_threads(ORT_THREADS)  # as many threads as ONNX Runtime gets
    try:
        ratios = {}
        for b in batches:
            p = pipe.prepare(*op_args(method, 0, image, samples=b))
            ratios[b] = (median_seconds(lambda: eager.run(p.key, p.rows), repeats)
                         / median_seconds(lambda: pipe.run(p.key, p.rows), repeats))
        return ratios
    finally:
        torch.set_num_threads(threads)


# ---- 2. served ------------------------------------------------------------------------------

class ServerFailed(RuntimeError):
    def __init__(self, reason: str, tail: list[str]):
        super().__init__(f"{reason}; server output:\n" + "\n".join(tail))
        self.reason, self.tail = reason, tail


@dataclass(frozen=True)
class ServerProcess:
    address: str  # gRPC host:port
    metrics_url: str
    pid: int


@contextlib.contextmanager
def server_process(args: list[str], name: str = "server"):
    """`python -m serving.server --port 0 --metrics-port 0 ARGS` in its own process group; yields a
    ServerProcess once it says health SERVING (ServerFailed otherwise) and always stops it:
    SIGTERM, SIGKILL after STOP_GRACE_S."""
    cmd = [sys.executable, "-m", "serving.server", "--port", "0", "--metrics-port", "0", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    output, seen, done = collections.deque(maxlen=200), {}, threading.Event()

    def read():  # drains the pipe (a full one would block the server) and watches for its lines
        for line in proc.stdout:
            output.append(line.rstrip())
            for key, pattern in (("address", r"gRPC listening on (\S+)"), ("metrics_url", r"metrics on (\S+)")):
                if match := re.search(pattern, line):
                    seen[key] = match.group(1)
            if "health SERVING" in line:
                seen["serving"] = True
                done.set()
        done.set()  # end of output: the server has exited

    threading.Thread(target=read, daemon=True).start()
    try:
        if not done.wait(START_TIMEOUT_S):
            raise ServerFailed(f"{name} not SERVING in {START_TIMEOUT_S} s", list(output)[-20:])
        if "serving" not in seen:
            raise ServerFailed(f"{name} exited with code {proc.wait(5)}", list(output)[-20:])
        yield ServerProcess(seen["address"], seen["metrics_url"], proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the server drains and closes its engines (TorchServe too)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def running_server(opts: ServeBench, engine: str, heads_dir: str):
    """The bench's server for `engine` on loopback (see server_process)."""
    return server_process(["--models", opts.models, "--host", "127.0.0.1", "--engine", engine,
                           "--onnx-dir", opts.onnx_dir, "--ort-threads", str(ORT_THREADS),
                           "--max-batch", str(opts.max_batch), "--max-batch-delay-ms", str(opts.max_batch_delay_ms),
                           "--heads-dir", heads_dir,
                           "--log-level", "WARNING"],  # per-request logs would cost the server CPU
                          name=f"server --engine {engine}")


async def run_level(call, request, concurrency: int, requests: int, seconds: float) -> dict:
    """`concurrency` coroutines take request indices from one counter until `requests` are
    taken or `seconds` have passed; each times its awaited calls."""
    import grpc

    indices, latencies, codes = itertools.count(), [], []
    started = time.perf_counter()
    deadline = started + seconds

    async def worker():
        while time.perf_counter() < deadline and (i := next(indices)) < requests:
            message = request(i)
            t0 = time.perf_counter()
            try:
                await call(message, timeout=seconds + 60)  # a stuck call ends instead of hanging the bench
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            latencies.append(time.perf_counter() - t0)
            codes.append(code)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, codes, time.perf_counter() - started)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and every process under it (TorchServe's Java and workers too)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def drive(address: str, engine: str, methods: list[str], png: bytes, opts: ServeBench, progress,
                server_pid: int | None = None) -> list[dict]:
    import grpc
    from serving.protos import pyramid_pb2, pyramid_pb2_grpc, semantics_pb2, semantics_pb2_grpc

    levels = []
    async with grpc.aio.insecure_channel(address) as channel:
        rpcs = {"generate": (pyramid_pb2_grpc.PyramidServiceStub(channel).Generate,
                             lambda i: pyramid_pb2.GenerateRequest(image=png, level=LEVEL, num_samples=1, seed=i)),
                "sample": (semantics_pb2_grpc.SemanticsServiceStub(channel).Sample,
                           lambda i: semantics_pb2.SampleRequest(seeds=[i], head=HEAD, truncation_psi=PSI))}
        for method in methods:
            call, request = rpcs[method]
            await run_level(call, request, opts.max_batch, opts.max_batch, opts.seconds)  # warm-up, not counted
            for c in opts.concurrency:
                runs = []  # the top level, which the ratios use, is run PASSES times; its median run is kept
                for _ in range(PASSES if c == max(opts.concurrency) else 1):
                    server0, client0 = (process_tree_cpu(server_pid) if server_pid else 0.0), own_cpu()
                    level = {"engine": engine, "method": method, "concurrency": c,
                             **await run_level(call, request, c, opts.requests, opts.seconds)}
                    done = max(1, level["requests"])
                    if server_pid:  # where the CPU goes: 2 cores are shared by the server and this client
                        level["server_cpu_ms_per_request"] = round((process_tree_cpu(server_pid) - server0) / done * 1e3, 2)
                    level["client_cpu_ms_per_request"] = round((own_cpu() - client0) / done * 1e3, 2)
                    runs.append(level)
                level = sorted(runs, key=lambda lv: lv["throughput"])[len(runs) // 2]
                level["throughput_runs"] = [lv["throughput"] for lv in runs]
                levels.append(level)
                progress(f"{engine} {method} c={c}: {level['throughput']} req/s, p50 {level['p50_ms']} ms, "
                         f"p99 {level['p99_ms']} ms, errors {level['errors'] or 'none'}, CPU ms per request: "
                         f"server {level.get('server_cpu_ms_per_request')}, client {level['client_cpu_ms_per_request']}")
    return levels


# ---- the whole run --------------------------------------------------------------------------

def device_info() -> dict:
    import onnxruntime
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                platform.processor())
    return {"cpu": name or platform.machine(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def bench_serve(opts: ServeBench = ServeBench(), progress: Callable[[str], None] = _stderr) -> dict:
    methods = bundle_methods(opts.models)
    if not methods:
        raise FileNotFoundError(f"{opts.models} has neither pyramid/ nor stylegan/ with heads/{HEAD}/")
    png, image = reference(opts.seed)
    result: dict = {"models": opts.models, "methods": methods, "device": device_info(),
                    "policy": {"max_batch": opts.max_batch, "max_batch_delay_ms": opts.max_batch_delay_ms,
                               "ort_threads": ORT_THREADS},
                    "load": {"concurrency": list(opts.concurrency), "requests": opts.requests, "seconds": opts.seconds},
                    "eager_batches": list(opts.eager_batches)}
    # 1. in process first: it exports the graphs the servers then find in the cache
    pipes = load_pipelines(opts.models, opts.onnx_dir, methods)
    for m in methods:
        cpu0 = own_cpu()
        result[f"inprocess.{m}"] = round(inprocess_throughput(pipes[m], m, image, opts.requests, opts.max_batch), 3)
        result[f"inprocess_cpu_ms_per_request.{m}"] = round((own_cpu() - cpu0) / (PASSES * opts.requests + opts.max_batch) * 1e3, 2)
        progress(f"in-process {m}: {result[f'inprocess.{m}']} req/s in batches of {opts.max_batch}, "
                 f"{result[f'inprocess_cpu_ms_per_request.{m}']} ms CPU per request")
        prefix = RATIO_KEYS[m]
        for b, ratio in ort_over_eager(pipes[m], m, image, opts.eager_batches).items():
            result[f"{prefix}.{b}"] = round(ratio, 3)
        progress(f"{prefix}: " + ", ".join(f"{b}: {result[f'{prefix}.{b}']}" for b in opts.eager_batches))
    del pipes  # the servers get the cores and memory to themselves
    # 2. one server at a time (two would share the cores)
    levels: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="semgen-bench-heads-") as heads_dir:  # no user head replaces lse
        for engine in opts.engines:
            progress(f"starting the {engine} server")
            try:
                with running_server(opts, engine, heads_dir) as server:
                    levels += asyncio.run(drive(server.address, engine, methods, png, opts, progress, server.pid))
            except ServerFailed as e:  # raised at start only
                if engine == "embedded":
                    raise
                result[f"engines.{engine}.error"] = f"{e.reason}; last output: " + " | ".join(e.tail[-3:])
                progress(f"{engine}: {result[f'engines.{engine}.error']}")
                continue
            top = [lv for lv in levels if lv["engine"] == engine and lv["concurrency"] == max(opts.concurrency)]
            gen = next((lv for lv in top if lv["method"] == "generate"), top[0])  # Generate, if served
            result.update({f"engines.{engine}.{k}": gen[key] for k, key in
                           (("throughput", "throughput"), ("p50", "p50_ms"), ("p99", "p99_ms"))})
    ratios = {m: lv["throughput"] / result[f"inprocess.{m}"] for lv in levels for m in methods
              if lv["engine"] == "embedded" and lv["method"] == m and lv["concurrency"] == max(opts.concurrency)}
    for m, ratio in ratios.items():
        result[f"served_over_inprocess.{m}"] = round(ratio, 3)
    result["served_over_inprocess"] = round(min(ratios.values()), 3) if ratios else None
    result["targets"] = {f"{k}>={v}": None if result.get(k) is None else result[k] >= v
                         for k, v in (("served_over_inprocess", 0.8), ("ort_over_eager.32", 1.5))}
    result["levels"] = levels
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({"options": asdict(opts), **result}, indent=2))
    plot(result, out / "serve.png")
    progress(f"wrote {out / 'serve.json'} and {out / 'serve.png'}")
    return result


# ---- the picture (PIL: matplotlib is not a dependency) ------------------------------------

PALETTE, GREY = ((30, 80, 200), (220, 110, 20), (40, 150, 60)), (130, 130, 130)


def plot(result: dict, path: Path, w: int = 340, h: int = 230) -> None:
    """Per method, throughput and p99 against concurrency (a line per engine, the in-process limit
    dashed); ort_over_eager by batch size as bars (parity and the 1.5 target dashed)."""
    from PIL import Image, ImageDraw, ImageFont

    methods = result["methods"]
    img = Image.new("RGB", (w * (len(methods) + 1), 2 * h), "white")
    draw = ImageDraw.Draw(img)
    draw.font = ImageFont.load_default(size=12)  # the default bitmap font drops spaces
    for col, m in enumerate(methods):
        for row, (key, label) in enumerate((("throughput", "req/s"), ("p99_ms", "p99 ms"))):
            series = collections.defaultdict(list)
            for lv in result["levels"]:
                if lv["method"] == m and lv[key] is not None:
                    series[lv["engine"]].append((lv["concurrency"], lv[key]))
            refs = [("in-process", result[f"inprocess.{m}"])] if key == "throughput" else []
            _panel(draw, (col * w, row * h, w, h), f"{m}: {label} against concurrency", series, refs)
    ratios = {m: [(b, result[f"{RATIO_KEYS[m]}.{b}"]) for b in result["eager_batches"]] for m in methods}
    _panel(draw, (len(methods) * w, 0, w, h), "ort_over_eager (eager s / ORT s) by batch", ratios,
           [("parity", 1.0), ("target", 1.5)], bars=True)
    img.save(path)


def _panel(draw, box, title: str, series: dict, refs, bars: bool = False) -> None:
    """Axes with evenly spaced x values; a line (or bars side by side) per series; dashed
    horizontal (label, y) references."""
    x0, y0, w, h = box
    left, right, top, bottom = x0 + 45, x0 + w - 15, y0 + 40, y0 + h - 25
    xs = sorted({x for points in series.values() for x, _ in points})
    ymax = 1.1 * max([y for points in series.values() for _, y in points] + [y for _, y in refs] + [1e-9])
    slot = (right - left) / max(len(xs), 1)
    px = lambda x: left + (xs.index(x) + 0.5) * slot
    py = lambda y: bottom - y / ymax * (bottom - top)
    draw.text((x0 + 8, y0 + 6), title, fill="black")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((x0 + 4, top - 5), f"{ymax:.3g}", fill="black")
    for x in xs:
        draw.text((px(x) - 4, bottom + 4), str(x), fill="black")
    for label, y in refs:
        for s in range(left, right, 8):
            draw.line([(s, py(y)), (min(s + 4, right), py(y))], fill=GREY)
        draw.text((right - 60, py(y) - 15), label, fill=GREY)
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        draw.text((left + 5 + 85 * i, y0 + 22), name, fill=color)  # the legend
        for j, (x, y) in enumerate(points):
            if bars:
                width = 0.8 * slot / len(series)
                bx = px(x) - 0.4 * slot + i * width
                draw.rectangle([bx, py(y), bx + width - 2, bottom], fill=color)
                draw.text((bx, py(y) - 11), f"{y:.2f}", fill="black")
                continue
            if j:
                draw.line([(px(points[j - 1][0]), py(points[j - 1][1])), (px(x), py(y))], fill=color, width=2)
            draw.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=color)
