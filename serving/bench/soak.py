"""`semgen bench soak`: a server under mixed load and attack for a while, and what it costs it.

    semgen bench soak --json        # prints the result; writes reports/bench/soak_<engine>.json and .png

One server (`python -m serving.server` on loopback, as in `semgen bench serve`) takes `concurrency` calls at
once for `seconds`, each drawn (seeded) from a mix: valid calls of every RPC (serving/bench/catalogue.py),
long jobs cancelled after a moment or given a short deadline, crafted requests (images whose header
promises 16-48 MiB decoded, 16-bit and truncated images, huge strings and counts, lying latent shapes),
valid requests with bytes flipped or cut, and random bytes. Meanwhile the server's process tree
(TorchServe's too) is sampled: RSS, open fds, threads.

The server must come out as it went in: no INTERNAL or UNKNOWN answer, no job running once the load
stops (`semgen_jobs_running`), RSS growth at peak within the decoded-bytes budget plus the working memory
of the calls in flight, fds and threads back near where they started, and still SERVING a valid call.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from semgen.options import opt
from serving.bench.catalogue import crafted_calls, generator_and_head, long_jobs, mutated, valid_calls
from serving.bench.process import export_onnx, export_torchserve, metric_samples, server_process

MiB = 1024 * 1024
# what each kind of call is; weights of the mix
KINDS = {"valid": 0.35, "cancelled": 0.1, "deadline": 0.1, "crafted": 0.2, "mutated": 0.15, "garbage": 0.1}
BROKEN = ("INTERNAL", "UNKNOWN", "DATA_LOSS")  # a bug in the server, whatever the request
SETTLE_S = 60  # after the load: how long jobs may take to notice their cancel or deadline
WARM_S = 10  # the mix before the baseline of RSS, fds and threads is taken (its calls are counted too)
# fds and threads, both counted idle (after the warm-up, after the load), may differ by this much: thread pools
# grow up to their bounds, TorchServe closes sockets lazily; a leak of one per call shows in hundreds
SLACK = 32


@dataclass(frozen=True)
class SoakBench:
    models: str = opt("artifacts", "the model bundle")
    engine: str = opt("embedded", "the server's engine", choices=("embedded", "torchserve"))
    seconds: float = opt(60.0, "how long the mixed load runs")
    concurrency: int = opt(8, "calls in flight")
    seed: int = opt(0, "the mix's random choices (which call, when to cancel, which bytes to flip)")
    decoded_budget_mib: int = opt(256, "the server's --max-decoded-bytes-in-flight, in MiB")
    # two jobs at their limits (SCS with 8 x 256 candidates: ~350 MiB each on the bundled models), forward
    # batches, replies, and what the allocator keeps
    working_mib: int = opt(1024, "RSS growth allowed beyond the decoded-bytes budget")
    out: str = opt("reports/bench", "where soak_<engine>.json and .png and these options go")
    onnx_dir: str = opt("var/onnx", "the cache of exported graphs (`semgen export onnx --cache`)")
    torchserve_dir: str = opt("var/torchserve", "the TorchServe archives (`semgen export mar --store <dir>/store`)")


def _stderr(message: str) -> None:
    print(message, flush=True, file=sys.stderr)


class TreeSampler:
    """RSS, fds and threads of a process and its children, sampled every `period` s on a thread."""

    def __init__(self, pid: int, period: float = 0.25):
        import psutil

        self._root, self._psutil, self._period = psutil.Process(pid), psutil, period
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> dict:
        rss = fds = threads = 0
        for p in [self._root, *self._root.children(recursive=True)]:
            try:
                rss, fds, threads = rss + p.memory_info().rss, fds + p.num_fds(), threads + p.num_threads()
            except self._psutil.Error:  # a worker that just exited
                continue
        return {"t": time.monotonic(), "rss_mib": round(rss / MiB, 1), "fds": fds, "threads": threads}

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append(self.now())

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def one_call(channel, method: str, stream: bool, request: bytes, timeout: float,
                   cancel_after: float | None = None) -> str:
    """The status code name of one call (a stream read to its end); cancelled by us after `cancel_after` s."""
    import grpc

    call = (channel.unary_stream if stream else channel.unary_unary)(method)(request, timeout=timeout)
    try:
        if cancel_after is None:
            if stream:
                async for _ in call:
                    pass
            else:
                await call
            return "OK"
        await asyncio.sleep(cancel_after)
        call.cancel()
        return (await call.code()).name
    except grpc.aio.AioRpcError as e:
        return e.code().name


def pick(rng: random.Random, calls: dict[str, list]) -> tuple[str, tuple, float, float | None, bytes]:
    """(kind, call, timeout, cancel_after, request bytes) of the next call in the mix."""
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    timeout, cancel_after = 120.0, None
    if kind in ("cancelled", "deadline"):
        call = rng.choice(calls["long"])
        if kind == "cancelled":
            cancel_after = rng.uniform(0.05, 1.5)
        else:
            timeout = rng.uniform(0.05, 1.5)
    else:
        call = rng.choice(calls["crafted" if kind == "crafted" else "valid"])
    request = call[3]
    if kind == "mutated":
        request = mutated(request, rng)
    elif kind == "garbage":
        request = rng.randbytes(rng.randint(1, 256))
    return kind, call, timeout, cancel_after, request


async def mixed_load(address: str, seconds: float, seed: int, opts: SoakBench, calls: dict[str, list],
                     progress) -> list[dict]:
    import grpc

    rng = random.Random(seed)
    records: list[dict] = []
    deadline = time.monotonic() + seconds
    options = [("grpc.max_receive_message_length", 64 * MiB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        async def worker():
            while time.monotonic() < deadline:
                kind, (name, method, stream, _), timeout, cancel_after, request = pick(rng, calls)
                t0 = time.monotonic()
                code = await one_call(channel, method, stream, request, timeout, cancel_after)
                records.append({"kind": kind, "call": name, "code": code, "seconds": round(time.monotonic() - t0, 3)})
                if len(records) % 100 == 0:
                    progress(f"{len(records)} calls, {collections.Counter(r['code'] for r in records).most_common(4)}")

        await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
    return records


def scrape_jobs_running(metrics_url: str) -> float:
    """The sum of semgen_jobs_running over its ops, from the server's /metrics."""
    return sum(value for _, value in metric_samples(metrics_url, "semgen_jobs_running"))


def settle(metrics_url: str, seconds: float) -> tuple[float, float]:
    """(jobs still running, seconds waited) once none runs or `seconds` have passed."""
    t0 = time.monotonic()
    while (running := scrape_jobs_running(metrics_url)) > 0 and time.monotonic() - t0 < seconds:
        time.sleep(0.5)
    return running, round(time.monotonic() - t0, 1)


def summarize(records: list[dict]) -> dict:
    codes = collections.Counter(r["code"] for r in records)
    by_kind = {kind: dict(sorted(collections.Counter(r["code"] for r in records if r["kind"] == kind).items()))
               for kind in KINDS}
    broken = [r for r in records if r["code"] in BROKEN]
    return {"calls": len(records), "codes": dict(sorted(codes.items())), "codes_by_kind": by_kind,
            "broken": len(broken), "broken_calls": sorted({r["call"] for r in broken}),
            "calls_by_name": dict(sorted(collections.Counter(r["call"] for r in records).items())),
            "slowest": sorted(records, key=lambda r: -r["seconds"])[:8]}


def bench_soak(opts: SoakBench = SoakBench(), progress: Callable[[str], None] = _stderr) -> dict:
    result: dict = {"models": opts.models, "engine": opts.engine, "seconds": opts.seconds,
                    "concurrency": opts.concurrency, "mix": KINDS}
    with tempfile.TemporaryDirectory(prefix="semgen-soak-heads-") as heads_dir:
        args = ["--models", opts.models, "--host", "127.0.0.1", "--engine", opts.engine, "--onnx-dir", opts.onnx_dir,
                "--torchserve-dir", opts.torchserve_dir, "--heads-dir", heads_dir, "--log-level", "ERROR",
                "--max-decoded-bytes-in-flight", str(opts.decoded_budget_mib * MiB), "--max-job-seconds", "30"]
        export_onnx(opts.models, opts.onnx_dir)
        if opts.engine == "torchserve":
            export_torchserve(opts.models, opts.onnx_dir, opts.torchserve_dir)
        progress(f"starting the {opts.engine} server")
        with server_process(args, name=f"server --engine {opts.engine}") as server:
            shape, size, fitted = asyncio.run(generator_and_head(server.address))
            result.update({"image_size": size, "latent_shape": list(shape), "fitted_lse": fitted})
            calls = {"valid": valid_calls(shape, size), "long": long_jobs(shape, size),
                     "crafted": crafted_calls(shape, size)}
            result["warm_up"] = asyncio.run(each_once(server.address, calls["valid"]))
            check = next(c for c in calls["valid"] if result["warm_up"][c[0]] == "OK")  # served here; asked again
            # then the mix for a while: models loaded and thread pools grown before the baseline
            warm = asyncio.run(mixed_load(server.address, WARM_S, opts.seed + 1, opts, calls, progress))
            settle(server.metrics_url, SETTLE_S)
            with TreeSampler(server.pid) as sampler:
                start = sampler.now()
                records = warm + asyncio.run(mixed_load(server.address, opts.seconds, opts.seed, opts, calls, progress))
                jobs_left, waited = settle(server.metrics_url, SETTLE_S)
                time.sleep(1.0)  # threads and fds of the last calls wind down
                end = sampler.now()
            after = asyncio.run(each_once(server.address, [check]))
    samples = [start, *sampler.samples, end]
    peak = max(samples, key=lambda s: s["rss_mib"])
    result.update(summarize(records))
    result.update({
        "jobs_left": jobs_left, "settle_seconds": waited, "served_after": after,
        "rss_mib": {"start": start["rss_mib"], "peak": peak["rss_mib"], "end": end["rss_mib"]},
        "fds": {"start": start["fds"], "peak": max(s["fds"] for s in samples), "end": end["fds"]},
        "threads": {"start": start["threads"], "peak": max(s["threads"] for s in samples), "end": end["threads"]},
        "rss_limit_mib": opts.decoded_budget_mib + opts.working_mib,
    })
    growth = peak["rss_mib"] - start["rss_mib"]
    result["targets"] = {
        "no INTERNAL/UNKNOWN": result["broken"] == 0,
        "no job left": jobs_left == 0,
        "rss peak - start <= budget + working": growth <= result["rss_limit_mib"],
        f"fds end <= start + {SLACK}": end["fds"] <= start["fds"] + SLACK,
        f"threads end <= start + {SLACK}": end["threads"] <= start["threads"] + SLACK,
        "serves after": after == {check[0]: "OK"},
    }
    result["passed"] = all(result["targets"].values())
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / f"soak_{opts.engine}"
    report.with_suffix(".json").write_text(json.dumps({"options": asdict(opts), **result, "samples": samples},
                                                      indent=2))
    plot(result, samples, report.with_suffix(".png"))
    progress(f"wrote {report}.json and .png; passed: {result['passed']}")
    return result


async def each_once(address: str, calls: list) -> dict[str, str]:
    """Each call once, in order: its code by name."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        return {name: await one_call(channel, method, stream, request, 300.0)
                for name, method, stream, request in calls}


def plot(result: dict, samples: list[dict], path: Path) -> None:
    """RSS, fds and threads against time; the answers' codes by kind of call."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), dpi=100, layout="constrained")
    ax_rss, ax_n, ax_codes = fig.subplots(1, 3)
    t = [s["t"] - samples[0]["t"] for s in samples]
    ax_rss.plot(t, [s["rss_mib"] for s in samples], label="server tree RSS")
    ax_rss.axhline(samples[0]["rss_mib"] + result["rss_limit_mib"], color="grey", linestyle="--", label="limit")
    ax_rss.set(title="RSS (MiB)", xlabel="s")
    ax_rss.legend(fontsize=8)
    for key in ("fds", "threads"):
        ax_n.plot(t, [s[key] for s in samples], label=key)
    ax_n.set(title="open fds and threads", xlabel="s")
    ax_n.legend(fontsize=8)
    kinds = list(result["codes_by_kind"])
    codes = sorted({code for by in result["codes_by_kind"].values() for code in by})
    bottom = [0] * len(kinds)
    for code in codes:
        counts = [result["codes_by_kind"][k].get(code, 0) for k in kinds]
        ax_codes.bar(kinds, counts, bottom=bottom, label=code)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax_codes.set(title=f"{result['calls']} calls: codes by kind")
    ax_codes.tick_params(axis="x", labelrotation=30)
    ax_codes.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
