"""`semgen bench golden`: the bundled models' replies under other CPU kernel sets, against the golden record.

    semgen bench golden --json      # prints the result; writes reports/golden/golden.json and golden.png

For each kernel set (KERNEL_SETS: another machine's float kernels, simulated on this one) one embedded server
(`python -m serving.server`) gets the golden calls (serving/bench/catalogue.py), and every reply is compared with the record
(tests/serving/golden): per RPC the largest pixel difference, the worst image's mean difference, the share of a
label map that differs and the largest float difference, and whether that is within the stated tolerance. Then
the drift of the iterative jobs: IMAGINE, SCS and SIE run for more iterations under each kernel set, compared
with the same job under the first kernel set, to show how far an optimisation carries float noise; and, for
scale, what another seed does to the same calls (`another_seed`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from google.protobuf import descriptor_pool, message_factory

from semgen.options import opt
from serving.bench.catalogue import iterative_jobs, reseeded_calls, valid_calls
from serving.bench.golden import Recorder, compare, expected, load_record, record_call
from serving.bench.process import export_onnx, server_process

LATENT_SHAPE = (10, 128)  # the bundled stylegan's w+ (the catalogue's latents must match it)


# Kernel sets a machine may have, simulated on this one: the environment of the server process and its extra
# flags. ATen (ATEN_CPU_CAPABILITY) and oneDNN (ONEDNN_MAX_CPU_ISA) pick their code paths from these variables;
# ONNX Runtime's MLAS picks by CPUID with no switch, so its sums are moved by the thread count instead (a machine
# with another core count splits them otherwise), and "default" runs the forward graphs on eager torch's
# portable kernels instead of ONNX Runtime.
KERNEL_SETS: dict[str, tuple[dict[str, str], list[str]]] = {
    "native": ({}, []),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"},
             ["--ort-threads", "1"]),
    "default": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, ["--runtime", "torch"]),
}


def served_calls(kernels: str, calls: list) -> list:
    """The calls a server of this kernel set answers: eager torch (--runtime torch) has no exported graphs, so none
    of the Open Inference Protocol's."""
    eager = "--runtime" in KERNEL_SETS[kernels][1]
    return [call for call in calls if not (eager and call[0].startswith("oip_"))]


def collect(address: str, calls: list, timeout: float = 300.0) -> tuple[dict, dict, dict]:
    """Sends each (name, method, stream, request bytes) in order: (records by name, their arrays, the exact
    sha256 of each OK reply)."""
    import grpc

    recorder, records, hashes = Recorder(), {}, {}
    with grpc.insecure_channel(address) as channel:
        for name, method, stream, request in calls:
            reply_type = output_type(method)
            try:
                if stream:
                    raw = list(channel.unary_stream(method)(request, timeout=timeout))
                else:
                    raw = [channel.unary_unary(method)(request, timeout=timeout)]
                replies = [reply_type.FromString(r) for r in raw]
                records[name] = record_call(recorder, name, "OK", replies, stream)
                hashes[name] = canonical_sha256(replies)
            except grpc.RpcError as error:
                records[name] = record_call(recorder, name, error.code().name, [], stream)
    return records, recorder.arrays, hashes


def output_type(method: str):
    """The reply message class of a method path /package.Service/Method (the stubs must be imported)."""
    service, name = method.strip("/").split("/")
    output = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name).output_type
    return message_factory.GetMessageClass(output)


def canonical_sha256(messages: list) -> str:
    """The sha256 of replies re-serialized deterministically (map fields have no fixed wire order): the exact
    record of one machine and build."""
    digest = hashlib.sha256()
    for message in messages:
        data = message.SerializeToString(deterministic=True)
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class GoldenBench:
    models: str = opt("artifacts", "the model bundle the record was made from")
    golden: str = opt("tests/serving/golden", "the golden record (rpcs.json, rpcs.npz)")
    kernel_sets: tuple[str, ...] = opt(tuple(KERNEL_SETS), f"kernel sets to run, of {', '.join(KERNEL_SETS)}")
    drift_iterations: tuple[int, ...] = opt((2, 10, 50), "iterations of the drift jobs (empty: no drift)")
    out: str = opt("reports/golden", "where golden.json, golden.png and these options go")
    onnx_dir: str = opt("var/onnx", "the bundle's ONNX export (made when missing)")


def _stderr(message: str) -> None:
    print(message, flush=True, file=sys.stderr)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def bench_golden(opts: GoldenBench = GoldenBench(), progress: Callable[[str], None] = _stderr) -> dict:
    unknown = [k for k in opts.kernel_sets if k not in KERNEL_SETS]
    if unknown or not opts.kernel_sets:
        raise ValueError(f"kernel_sets: {unknown or 'none'} not of {', '.join(KERNEL_SETS)}")
    want, want_arrays = expected(*load_record(Path(opts.golden)), "embedded")
    export_onnx(opts.models, opts.onnx_dir)
    drift_calls = [c for n in opts.drift_iterations for c in iterative_jobs(LATENT_SHAPE, n)]
    result: dict = {"cpu": cpu_name(), "kernel_sets": {}, "drift": {}}
    first = None
    for kernels in opts.kernel_sets:
        env, flags = KERNEL_SETS[kernels]
        calls = served_calls(kernels, valid_calls(LATENT_SHAPE))
        progress(f"{kernels}: {env or 'this machine'} {' '.join(flags)}")
        with tempfile.TemporaryDirectory(prefix="semgen-golden-heads-") as heads, server_process(
                ["--models", opts.models, "--onnx-dir", opts.onnx_dir, "--heads-dir", heads, "--max-batch", "4",
                 "--log-level", "WARNING", *flags], name=f"server ({kernels})", env=env) as server:
            got, arrays, _ = collect(server.address, calls)
            drift = collect(server.address, drift_calls)[:2]
            if first is None:  # the scale of a real change: another seed
                reseeded = collect(server.address, reseeded_calls(LATENT_SHAPE))[:2]
                result["another_seed"] = compare({n: want[n] for n in reseeded[0]}, want_arrays, *reseeded)
        rows = compare({n: r for n, r in want.items() if n in got}, want_arrays, got, arrays)
        result["kernel_sets"][kernels] = {"env": env, "flags": flags, "passed": all(r["ok"] for r in rows.values()),
                                          "calls": rows}
        progress(f"{kernels}: " + ", ".join(f"{n} {r['max_px']}/{r['mean_px']}" for n, r in rows.items()
                                             if r.get("max_px")) + f"; within tolerance: "
                 f"{result['kernel_sets'][kernels]['passed']}")
        if first is None:
            first = drift
        else:  # the same long jobs, against the first kernel set's
            result["drift"][kernels] = compare(first[0], first[1], *drift)
    result["passed"] = all(k["passed"] for k in result["kernel_sets"].values())
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "golden.json").write_text(json.dumps({"options": asdict(opts), **result}, indent=2))
    plot(result, out / "golden.png")
    progress(f"wrote {out / 'golden.json'} and {out / 'golden.png'}")
    return result


def plot(result: dict, path: Path) -> None:
    """Per RPC, the largest and the mean pixel difference to the record by kernel set (bars); the iterative jobs'
    mean pixel drift against their iterations (a line per job and kernel set)."""
    from matplotlib.figure import Figure

    sets = result["kernel_sets"]
    names = list(next(iter(sets.values()))["calls"])
    fig = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    axes = fig.subplots(3, 1, squeeze=False)[:, 0]
    width = 0.8 / len(sets)
    for ax, key, label in ((axes[0], "max_px", "largest pixel difference (levels of 255)"),
                           (axes[1], "mean_px", "worst image's mean pixel difference")):
        for i, (kernels, entry) in enumerate(sets.items()):
            ax.bar([j + i * width for j in range(len(names))],
                   [entry["calls"].get(n, {}).get(key, 0) for n in names], width, label=kernels)
        ax.set_xticks([j + width * (len(sets) - 1) / 2 for j in range(len(names))], names, rotation=30, ha="right",
                      fontsize=8)
        ax.set(title=f"{label}, against the record", ylabel=key)
        ax.legend(fontsize=8)
    ax = axes[2]
    for kernels, rows in result["drift"].items():
        jobs = sorted({n.rsplit("_", 1)[0] for n in rows})
        for job in jobs:
            points = sorted((int(n.rsplit("_", 1)[1]), r.get("mean_px", 0)) for n, r in rows.items()
                            if n.rsplit("_", 1)[0] == job)
            ax.plot(*zip(*points), marker="o", label=f"{job} ({kernels})")
    ax.set(title="drift of the iterative jobs against the first kernel set", xlabel="iterations",
           ylabel="mean pixel difference")
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
