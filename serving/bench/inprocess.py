"""The in-process half of `semgen bench serve`: the pipelines on ONNX Runtime running batches back to back
(the machine's limit), and ONNX Runtime against eager torch on identical rows."""

from __future__ import annotations

import copy
import io
import statistics
import time
from typing import Callable

import numpy as np

from semgen.bundle import Bundle
from semgen.pipelines.forward import Op
from serving.bench.process import export_onnx

ORT_THREADS = 2  # the server's default --ort-threads; eager torch gets as many threads
LEVEL, HEAD, PSI = "conv3", "lse", 1.0  # what every Generate / Sample request asks for
PASSES = 3  # the in-process limit and the highest concurrency are measured this often (median)


def exported_onnx(models: str, cache: str):
    """The bundle's ONNX export in `cache` (what the server opens), made by the export command when it is
    missing: the bench runs the build step as a user would."""
    export_onnx(models, cache)
    return Bundle(models).exported_onnx(cache)


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
        return Op.GENERATE, dict(image=image, levels={LEVEL: None}, num_samples=samples, seed=i, class_index=None)
    head = HEAD if method == "sample" else None  # "sample_plain": a bundle without heads/lse (an imported generator)
    return Op.SAMPLE, dict(seeds=list(range(i, i + samples)), latents=None, psi=PSI, predictor=head)


def load_pipelines(models: str, onnx_dir: str, methods: list[str], device: str = "cpu") -> dict:
    """The pipelines with their modules on `device` and the forward graphs on ONNX Runtime (its CUDA
    provider where onnxruntime has one and `device` is a GPU)."""
    from semgen.runtime.onnx import OnnxModels
    from semgen.pipelines.pyramid import PyramidPipeline
    from semgen.pipelines.semantics import SemanticsPipeline

    onnx = OnnxModels(exported_onnx(models, onnx_dir), threads=ORT_THREADS, device=device)  # the server's cache, too
    kinds = {"generate": PyramidPipeline, "sample": SemanticsPipeline, "sample_plain": SemanticsPipeline}
    return {m: kinds[m].from_dir(models, device=device, onnx=onnx) for m in methods}


def eager(pipe):
    """The same pipeline with its forward passes on torch (its modules, its device)."""
    copied = copy.copy(pipe)
    copied.onnx = None
    return copied


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
    """Eager torch seconds / ONNX Runtime seconds of one `run` over the same rows, per batch size (torch on
    the pipeline's device: on a GPU, eager CUDA against ONNX Runtime's provider)."""
    import torch

    on_torch = eager(pipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(ORT_THREADS)  # as many threads as ONNX Runtime gets
    try:
        ratios = {}
        for b in batches:
            p = pipe.prepare(*op_args(method, 0, image, samples=b))
            ratios[b] = (median_seconds(lambda: on_torch.run(p.key, p.rows), repeats)
                         / median_seconds(lambda: pipe.run(p.key, p.rows), repeats))
        return ratios
    finally:
        torch.set_num_threads(threads)
