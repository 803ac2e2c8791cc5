"""`semgen bench serve`: what the gRPC server delivers against what this machine can do.

    semgen bench serve --json        # prints the result; writes reports/bench/serve.json and serve.png
    semgen bench serve --device cuda --runtime torch --engines embedded --out reports/bench_cuda --json

1. In this process, the pipelines (on --runtime, modules on --device) run batches of `max_batch` requests
   back to back (`run_batch`, what the server's batcher calls): the limit of this machine, `inprocess.<method>`.
   Then ONNX Runtime against eager torch on --device on identical rows, by batch size (`ort_over_eager.<batch>`).
2. One server at a time (`python -m serving.server` on loopback, one per engine): an asyncio gRPC
   load generator keeps c requests in flight for every concurrency c until `requests` are done or
   `seconds` have passed; throughput and p50/p95/p99 latency per (engine, method, concurrency).
`served_over_inprocess.<method>` = the embedded server's throughput at the highest concurrency /
the in-process throughput; `served_over_inprocess` is the lowest over the methods.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from semgen.options import opt
from serving.bench.inprocess import (HEAD, LEVEL, ORT_THREADS, PASSES, PSI, eager, inprocess_throughput,
                                     load_pipelines, ort_over_eager, reference)
from serving.bench.process import ServerFailed, export_torchserve, own_cpu, process_tree_cpu, server_process

TORCHSERVE_DIR = "var/torchserve"  # the server's default --torchserve-dir
RATIO_KEYS = {"generate": "ort_over_eager", "sample": "ort_over_eager_sample",
              "sample_plain": "ort_over_eager_sample_plain"}


@dataclass(frozen=True)
class ServeBench:
    models: str = opt("artifacts", "the model bundle")
    concurrency: tuple[int, ...] = opt((1, 4, 16), "requests in flight, one level each")
    # fewer requests make ramp-up and tail weigh
    requests: int = opt(256, "requests per (engine, method, concurrency) level")
    seconds: float = opt(30.0, "time cap per level")
    max_batch: int = opt(8, "the server's --max-batch (and the in-process batch)")
    max_batch_delay_ms: float = opt(5.0, "the server's --max-batch-delay-ms")
    engines: tuple[str, ...] = opt(("embedded", "torchserve"), "servers to measure, one at a time")
    eager_batches: tuple[int, ...] = opt((1, 8, 32), "batch sizes of ONNX Runtime against eager torch")
    out: str = opt("reports/bench", "where serve.json, serve.png and these options go")
    onnx_dir: str = opt("var/onnx", "the cache of exported graphs (shared with the server; exported into when "
                                    "missing)")
    seed: int = opt(0, "the scene rendered as Generate's reference image")
    device: str = opt("cpu", "torch device of the pipelines in process and of the servers (--device): cpu, cuda")
    runtime: str = opt("onnx", "forward work in process and on the servers (--runtime): onnx (ONNX Runtime, its "
                               "CUDA provider where installed) or torch (eager on --device)")

    def __post_init__(self):
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"--runtime must be onnx or torch, got {self.runtime!r}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be cpu or cuda[:N], got {self.device!r}")


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
    """generate (a pyramid), and sample with masks by heads/lse, or sample_plain (images only) for a generator
    without that head (an imported one)."""
    m = Path(models)
    sample = ("sample" if (m / "heads" / HEAD).exists() else "sample_plain") if (m / "stylegan").exists() else None
    return [name for name, there in (("generate", (m / "pyramid").exists()), (sample, sample is not None)) if there]


# ---- 2. served ------------------------------------------------------------------------------

def running_server(opts: ServeBench, engine: str, heads_dir: str):
    """The bench's server for `engine` on loopback (see server_process); TorchServe's archives are built
    first by the export command when missing."""
    if engine == "torchserve":
        export_torchserve(opts.models, opts.onnx_dir, TORCHSERVE_DIR, opts.max_batch, opts.max_batch_delay_ms,
                          ORT_THREADS)
    return server_process(["--models", opts.models, "--host", "127.0.0.1", "--engine", engine,
                           "--onnx-dir", opts.onnx_dir, "--ort-threads", str(ORT_THREADS),
                           "--max-batch", str(opts.max_batch), "--max-batch-delay-ms", str(opts.max_batch_delay_ms),
                           "--heads-dir", heads_dir, "--torchserve-dir", TORCHSERVE_DIR,
                           "--device", opts.device, "--runtime", opts.runtime,
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


async def drive(address: str, engine: str, methods: list[str], png: bytes, opts: ServeBench, progress,
                server_pid: int | None = None) -> list[dict]:
    import grpc
    from serving.core.protos import pyramid_pb2, pyramid_pb2_grpc, semantics_pb2, semantics_pb2_grpc

    levels = []
    async with grpc.aio.insecure_channel(address) as channel:
        rpcs = {"generate": (pyramid_pb2_grpc.PyramidServiceStub(channel).Generate,
                             lambda i: pyramid_pb2.GenerateRequest(image=png, level=LEVEL, num_samples=1, seed=i)),
                "sample": (semantics_pb2_grpc.SemanticsServiceStub(channel).Sample,
                           lambda i: semantics_pb2.SampleRequest(seeds=[i], head=HEAD, truncation_psi=PSI)),
                "sample_plain": (semantics_pb2_grpc.SemanticsServiceStub(channel).Sample,
                                 lambda i: semantics_pb2.SampleRequest(seeds=[i], truncation_psi=PSI))}
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

def device_info(device: str = "cpu") -> dict:
    import onnxruntime
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                platform.processor())
    return {"cpu": name or platform.machine(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "ort_providers": onnxruntime.get_available_providers(),
            "torch_device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"}


def bench_serve(opts: ServeBench = ServeBench(), progress: Callable[[str], None] = _stderr) -> dict:
    methods = bundle_methods(opts.models)
    if not methods:
        raise FileNotFoundError(f"{opts.models} has neither pyramid/ nor stylegan/")
    png, image = reference(opts.seed)
    if opts.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {opts.device}: no CUDA GPU is visible to torch {torch.__version__}")
    result: dict = {"models": opts.models, "methods": methods, "device": device_info(opts.device),
                    "runtime": opts.runtime,
                    "policy": {"max_batch": opts.max_batch, "max_batch_delay_ms": opts.max_batch_delay_ms,
                               "ort_threads": ORT_THREADS},
                    "load": {"concurrency": list(opts.concurrency), "requests": opts.requests, "seconds": opts.seconds},
                    "eager_batches": list(opts.eager_batches)}
    # 1. in process first: it exports the graphs the servers then find in the cache
    pipes = load_pipelines(opts.models, opts.onnx_dir, methods, opts.device)
    for m in methods:
        cpu0 = own_cpu()
        pipe = pipes[m] if opts.runtime == "onnx" else eager(pipes[m])  # the runtime the server is given
        result[f"inprocess.{m}"] = round(inprocess_throughput(pipe, m, image, opts.requests, opts.max_batch), 3)
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


# ---- the picture --------------------------------------------------------------------------

def plot(result: dict, path: Path) -> None:
    """Per method, throughput and p99 against concurrency (a line per engine, the in-process limit
    dashed); ort_over_eager by batch size as bars (parity and the 1.5 target dashed)."""
    from matplotlib.figure import Figure

    methods = result["methods"]
    fig = Figure(figsize=(4.5 * (len(methods) + 1), 7), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(methods) + 1, squeeze=False)
    engines = list(dict.fromkeys(lv["engine"] for lv in result["levels"]))
    for col, m in enumerate(methods):
        for row, (key, label) in enumerate((("throughput", "req/s"), ("p99_ms", "p99 ms"))):
            ax = axes[row][col]
            for engine in engines:
                points = [(lv["concurrency"], lv[key]) for lv in result["levels"]
                          if lv["method"] == m and lv["engine"] == engine and lv[key] is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=engine)
            if key == "throughput":
                ax.axhline(result[f"inprocess.{m}"], color="grey", linestyle="--", label="in-process")
            ax.set(title=f"{m}: {label} against concurrency", xlabel="concurrency", xscale="log")
            ax.set_xticks(result["load"]["concurrency"], [str(c) for c in result["load"]["concurrency"]])
            ax.minorticks_off()
            ax.legend(fontsize=8)
    ax = axes[0][-1]
    batches = result["eager_batches"]
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + i * width for j in range(len(batches))]
        bars = ax.bar(xs, [result[f"{RATIO_KEYS[m]}.{b}"] for b in batches], width, label=m)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    for label, y in (("parity", 1.0), ("target", 1.5)):
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
    ax.set(title="ort_over_eager (eager s / ORT s) by batch", xlabel="batch")
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(batches))], [str(b) for b in batches])
    ax.legend(fontsize=8)
    axes[1][-1].axis("off")
    fig.savefig(path, bbox_inches="tight")
