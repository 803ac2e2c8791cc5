"""The gRPC server bootstrap (the one module that wires serving together).

    semgen serve --models artifacts --port 50051 --metrics-port 9464
    python -m serving.server --models artifacts            # same flags, no CLI needed

Order of events: bind gRPC + metrics ports with health NOT_SERVING, load the models off the
event loop, attach them and switch health to SERVING. The bundle decides what is served:
PyramidService if <models>/pyramid exists, SemanticsService if <models>/stylegan exists,
ImagineService if <models>/classifier exists or --imagine-classifier is given, HiganService if
<models>/stylegan, classifier, attributes and boundaries all exist; a service whose model is
missing answers NOT_FOUND and its health stays NOT_SERVING. Iterative jobs of every
service share one limit, --max-jobs.
Engines: --engine embedded (default) runs the models here, forward-only work on ONNX Runtime
through the dynamic batcher (--runtime onnx: the bundle is exported to --onnx-dir on start) or
on eager torch (--runtime torch); --engine torchserve forwards to TorchServe
(serving/torchserve_gateway.py).
On SIGINT/SIGTERM: health NOT_SERVING, stop accepting RPCs, let in-flight ones finish for up to
--grace-seconds (then running jobs are cancelled), close the engines, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from serving.batcher import BatchPolicy
from serving.engine import Engine, EmbeddedEngine
from serving.higan_engine import BUNDLE_FOLDERS as HIGAN_FOLDERS, EmbeddedHiganEngine, HiganEngine
from serving.higan_servicer import HiganServicer, add_higan_servicer
from serving.imagine_engine import EmbeddedImagineEngine, ImagineEngine
from serving.imagine_servicer import ImagineServicer, add_imagine_servicer
from serving.interceptors import TelemetryInterceptor
from serving.jobs import JobRunner
from serving.metrics import ServingMetrics
from serving.protos import HIGAN_SERVICE, IMAGINE_SERVICE, PYRAMID_SERVICE, SEMANTICS_SERVICE
from serving.semantics_engine import EmbeddedSemanticsEngine, SemanticsEngine
from serving.semantics_servicer import SemanticsServicer, add_semantics_servicer
from serving.servicers import PyramidServicer, add_pyramid_servicer
from serving.validation import Limits

log = logging.getLogger("serving.server")
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    models: str = "artifacts"
    classifier: str = ""  # replaces <models>/classifier: a checkpoint folder or torchvision-vgg16:PATH
    imagine_classifier: str = ""  # IMAGINE's classifier instead of <models>/classifier (e.g. torchvision-resnet50:PATH)
    heads_dir: str = "var/heads"  # where FitHead saves user heads (and loads them on start)
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    device: str = "auto"
    workers: int = 1
    engine: str = "embedded"  # embedded (in this process) or torchserve
    torchserve_address: str = ""  # --engine torchserve: a running TorchServe's inference URL; empty: start one
    torchserve_dir: str = "var/torchserve"  # its model store (built from the bundle) and logs
    runtime: str = "onnx"  # forward-only work on: onnx (ONNX Runtime, batched) or torch (eager, one call at a time)
    onnx_dir: str = "var/onnx"  # the bundle's graphs go to <onnx_dir>/<fingerprint of its weights>/
    ort_threads: int = 2
    max_batch: int = 8
    max_batch_delay_ms: float = 5.0
    max_queue: int = 64
    max_samples: int = 16
    max_image_bytes: int = 8 * MiB
    max_image_pixels: int = 4096 * 4096
    max_message_bytes: int = 64 * MiB
    max_jobs: int = 2
    max_iterations: int = 500
    max_fit_iterations: int = 2000
    max_candidates: int = 256
    max_imagine_iterations: int = 5000
    grace_seconds: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def check(self) -> None:
        if min(self.max_samples, self.workers, self.max_jobs, self.max_iterations, self.max_fit_iterations,
               self.max_candidates, self.max_imagine_iterations) < 1:
            raise ValueError("--max-samples, --workers, --max-jobs, --max-iterations, --max-fit-iterations, "
                             "--max-candidates and --max-imagine-iterations must be >= 1")
        if self.engine not in ("embedded", "torchserve"):
            raise ValueError(f"--engine must be embedded or torchserve, got {self.engine!r}")
        if self.torchserve_address and not self.torchserve_address.startswith("http://"):
            raise ValueError(f"--torchserve-address must be an http:// URL, got {self.torchserve_address!r}")
        if self.engine == "torchserve" and self.runtime != "onnx":
            raise ValueError("--engine torchserve runs the forward work on ONNX Runtime; drop --runtime torch")
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"--runtime must be onnx or torch, got {self.runtime!r}")
        self.batch_policy.check()
        if self.ort_threads < 1:
            raise ValueError("--ort-threads must be >= 1")
        if self.max_image_bytes >= self.max_message_bytes:
            raise ValueError("--max-image-bytes must be below --max-message-bytes (the image travels inside a message)")

    @property
    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(self.max_batch, self.max_batch_delay_ms / 1000, self.max_queue)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_samples, self.max_image_bytes, self.max_image_pixels, self.max_iterations,
                      self.max_fit_iterations, self.max_candidates, self.max_imagine_iterations)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeOptions()
    a = parser.add_argument
    a("--models", default=d.models,
      help="model bundle folder: classifier/ + pyramid/ and/or stylegan/ (+ segmenter/, heads/, attributes/, "
           "boundaries/) (default: %(default)s)")
    a("--classifier", default=d.classifier,
      help="use this classifier instead of <models>/classifier: a checkpoint folder or torchvision-vgg16:PATH")
    a("--imagine-classifier", default=d.imagine_classifier,
      help="IMAGINE's classifier instead of <models>/classifier: a checkpoint folder, torchvision-vgg16:PATH "
           "or torchvision-resnet50:PATH")
    a("--heads-dir", default=d.heads_dir, help="where FitHead saves user heads (default: %(default)s)")
    a("--host", default=d.host, help="address to bind gRPC and metrics on (default: %(default)s)")
    a("--port", type=int, default=d.port, help="gRPC port; 0 picks a free one (default: %(default)s)")
    a("--metrics-port", type=int, default=d.metrics_port, help="Prometheus /metrics port (default: %(default)s)")
    a("--device", default=d.device, help="torch device: auto (cuda if available), cpu, cuda, cuda:1 (default: %(default)s)")
    a("--workers", type=int, default=d.workers, help="engine threads running the model (default: %(default)s)")
    a("--engine", default=d.engine, choices=("embedded", "torchserve"),
      help="where inference runs: in this process, or on TorchServe (started here on loopback from the bundle, "
           "or at --torchserve-address) (default: %(default)s)")
    a("--torchserve-address", default=d.torchserve_address,
      help="inference URL of a running TorchServe with semgen's models (semgen export mar), e.g. "
           "http://127.0.0.1:8080; empty: start one")
    a("--torchserve-dir", default=d.torchserve_dir,
      help="the started TorchServe's model store and logs (default: %(default)s)")
    a("--runtime", default=d.runtime, choices=("onnx", "torch"),
      help="forward-only work (Generate, Repaint, Composite, Sample, Segment) on ONNX Runtime with the dynamic "
           "batcher, or on eager torch one call at a time (default: %(default)s)")
    a("--onnx-dir", default=d.onnx_dir,
      help="cache of exported graphs: <onnx-dir>/<fingerprint of the weights>/, exported on start when "
           "missing (default: %(default)s)")
    a("--ort-threads", type=int, default=d.ort_threads, help="ONNX Runtime intra-op threads (default: %(default)s)")
    a("--max-batch", type=int, default=d.max_batch, help="requests per batched graph run (default: %(default)s)")
    a("--max-batch-delay-ms", type=float, default=d.max_batch_delay_ms,
      help="how long the oldest request waits for others to batch with (default: %(default)s)")
    a("--max-queue", type=int, default=d.max_queue,
      help="requests waiting for a batch (with --engine torchserve: calls waiting for TorchServe); more are "
           "refused with RESOURCE_EXHAUSTED (default: %(default)s)")
    a("--max-samples", type=int, default=d.max_samples, help="largest num_samples per request (default: %(default)s)")
    a("--max-image-bytes", type=int, default=d.max_image_bytes, help="largest encoded reference image (default: %(default)s)")
    a("--max-image-pixels", type=int, default=d.max_image_pixels, help="largest reference width*height (default: %(default)s)")
    a("--max-message-bytes", type=int, default=d.max_message_bytes, help="gRPC send/receive message limit (default: %(default)s)")
    a("--max-jobs", type=int, default=d.max_jobs,
      help="iterative jobs (FitHead, SampleConditional, EditSemantics, Imagine) running at once (default: %(default)s)")
    a("--max-iterations", type=int, default=d.max_iterations,
      help="largest iterations of SampleConditional/EditSemantics (default: %(default)s)")
    a("--max-fit-iterations", type=int, default=d.max_fit_iterations,
      help="largest iterations of FitHead (default: %(default)s)")
    a("--max-candidates", type=int, default=d.max_candidates,
      help="largest n_init (random latents per sample) of SampleConditional (default: %(default)s)")
    a("--max-imagine-iterations", type=int, default=d.max_imagine_iterations,
      help="largest stage1/stage2 iterations of Imagine (default: %(default)s)")
    a("--grace-seconds", type=float, default=d.grace_seconds, help="time in-flight RPCs get on shutdown (default: %(default)s)")
    a("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING, ... (default: %(default)s)")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Gateway:
    """The gRPC server and what gets attached to it once the models are loaded."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    pyramid: PyramidServicer
    semantics: SemanticsServicer
    imagine: ImagineServicer
    higan: HiganServicer


@dataclass
class Engines:
    """What a bundle serves; None where it has no model for a service."""

    pyramid: Engine | None = None
    semantics: SemanticsEngine | None = None
    imagine: ImagineEngine | None = None
    higan: HiganEngine | None = None

    def loaded(self) -> list:
        return [e for e in (self.pyramid, self.semantics, self.imagine, self.higan) if e is not None]


SERVICES = (PYRAMID_SERVICE, SEMANTICS_SERVICE, IMAGINE_SERVICE, HIGAN_SERVICE)


async def create_server(opts: ServeOptions, metrics: ServingMetrics) -> Gateway:
    """The gRPC server with every service registered and health NOT_SERVING, not started.
    Attach engines and set SERVING when they are loaded (`attach_engines`)."""
    server = grpc.aio.server(
        interceptors=[TelemetryInterceptor(metrics)],
        options=[
            ("grpc.max_send_message_length", opts.max_message_bytes),
            ("grpc.max_receive_message_length", opts.max_message_bytes),
        ],
    )
    pyramid = PyramidServicer(opts.limits)
    add_pyramid_servicer(server, pyramid)
    semantics = SemanticsServicer(opts.limits)
    add_semantics_servicer(server, semantics)
    imagine = ImagineServicer(opts.limits)
    add_imagine_servicer(server, imagine)
    higan = HiganServicer(opts.limits)
    add_higan_servicer(server, higan)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    await set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)  # the default is SERVING
    return Gateway(server, health, pyramid, semantics, imagine, higan)


async def set_health(health: health_aio.HealthServicer, status, services=("", *SERVICES)) -> None:
    for service in services:  # "" is the whole server
        await health.set(service, status)


async def attach_engines(gateway: Gateway, engines: Engines, models: str) -> None:
    """Attach what the bundle has, mark the rest not served, and switch health to SERVING."""
    served = [""]
    higan_lacks = f"lacks one of {', '.join(f'{f}/' for f in HIGAN_FOLDERS)}"
    for servicer, engine, service, lacks in (
            (gateway.pyramid, engines.pyramid, PYRAMID_SERVICE, "has no pyramid/"),
            (gateway.semantics, engines.semantics, SEMANTICS_SERVICE, "has no stylegan/"),
            (gateway.imagine, engines.imagine, IMAGINE_SERVICE, "has no classifier/"),
            (gateway.higan, engines.higan, HIGAN_SERVICE, higan_lacks)):
        if engine is None:
            servicer.not_served(f"model: this server's bundle ({models}) {lacks}, so {service} is not served here")
        else:
            servicer.attach(engine)
            served.append(service)
    await set_health(gateway.health, health_pb2.HealthCheckResponse.SERVING, served)


def load_embedded(opts: ServeOptions, metrics: ServingMetrics) -> Engines:
    """Load every model the bundle has (blocking; runs in a thread)."""
    models = Path(opts.models)
    imagine = (models / "classifier").exists() or bool(opts.imagine_classifier)
    if not (models / "pyramid").exists() and not (models / "stylegan").exists() and not imagine:
        raise FileNotFoundError(f"{models} has none of pyramid/, stylegan/ and classifier/ (and no --imagine-classifier)")
    engines = Engines()
    jobs = JobRunner(opts.max_jobs, metrics)  # one limit for the iterative jobs of every service
    onnx, policy = exported_models(opts)
    if (models / "pyramid").exists():
        # a --classifier other than the bundle's was not exported: that pyramid runs on torch
        engines.pyramid = EmbeddedEngine.from_dir(models, device=opts.device, workers=opts.workers, metrics=metrics,
                                                  classifier=opts.classifier or None,
                                                  onnx=None if opts.classifier else onnx,
                                                  policy=None if opts.classifier else policy)
    if (models / "stylegan").exists():
        engines.semantics = EmbeddedSemanticsEngine.from_dir(models, opts.heads_dir, device=opts.device,
                                                             workers=opts.workers, metrics=metrics, jobs=jobs,
                                                             onnx=onnx, policy=policy)
    if imagine:
        engines.imagine = EmbeddedImagineEngine.from_dir(models, opts.imagine_classifier or None, device=opts.device,
                                                         metrics=metrics, jobs=jobs)
    missing = [f"{folder}/" for folder in HIGAN_FOLDERS if not (models / folder).exists()]
    if missing:
        log.info("HiganService not served: %s has no %s", models, ", ".join(missing))
    else:
        engines.higan = EmbeddedHiganEngine.from_dir(models, device=opts.device, workers=opts.workers, metrics=metrics)
    return engines


def exported_models(opts: ServeOptions):
    """(OnnxModels, BatchPolicy) for --runtime onnx, exporting the bundle first if its graphs are
    missing or were made from other weights; (None, None) for --runtime torch."""
    if opts.runtime != "onnx":
        return None, None
    from export.onnx import ensure_exported
    from semgen.pipelines.onnx_models import OnnxModels

    started = time.perf_counter()
    folder = ensure_exported(opts.models, opts.onnx_dir)
    log.info("ONNX graphs of %s in %s (%.1fs)", opts.models, folder, time.perf_counter() - started)
    return OnnxModels(folder, opts.ort_threads, opts.device), opts.batch_policy


async def serve(opts: ServeOptions,
                load_engines: Callable[[ServeOptions, ServingMetrics], Engines] = load_embedded) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code. `load_engines` runs in a thread."""
    opts.check()
    metrics = ServingMetrics()
    gateway = await create_server(opts, metrics)
    server, health = gateway.server, gateway.health

    port = server.add_insecure_port(_hostport(opts.host, opts.port))  # raises if it cannot bind
    metrics_http = metrics.serve_http(opts.host, opts.metrics_port)
    await server.start()
    print(f"gRPC listening on {_hostport(opts.host, port)}", flush=True)
    print(f"metrics on http://{_hostport(opts.host, metrics_http.server_port)}/metrics", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    engines = Engines()
    code = 0
    started = time.perf_counter()
    if opts.engine == "torchserve" and load_engines is load_embedded:
        from serving.torchserve_gateway import load_torchserve

        load_engines = load_torchserve
    loading = asyncio.ensure_future(asyncio.to_thread(load_engines, opts, metrics))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engines = loading.result()  # a load error propagates to the except below
            await attach_engines(gateway, engines, opts.models)
            served = [name for name, e in (("pyramid", engines.pyramid), ("semantics", engines.semantics),
                                           ("imagine", engines.imagine), ("higan", engines.higan)) if e]
            print(f"models loaded from {opts.models} in {time.perf_counter() - started:.1f}s "
                  f"({', '.join(served)}); health SERVING", flush=True)
            await stopping
        # A signal during loading: the load thread cannot be interrupted; exit once it returns.
        print("shutting down: health NOT_SERVING, draining in-flight requests", flush=True)
    except Exception as e:
        log.debug("model load failed", exc_info=True)
        print(f"error: could not load the model bundle {opts.models!r}: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        stopping.cancel()
        if not loading.done():  # a signal during loading: wait for it, then close what it made
            with contextlib.suppress(Exception):
                engines = await loading
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await health.enter_graceful_shutdown()
        await server.stop(opts.grace_seconds)  # new RPCs are refused; running ones get the grace
        for engine in engines.loaded():
            await engine.close()
        metrics_http.shutdown()
    print("stopped", flush=True)
    return code


def run(args: argparse.Namespace) -> int:
    """Entry point for `semgen serve` (and `python -m serving.server`)."""
    opts = ServeOptions.from_args(args)
    logging.basicConfig(level=opts.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("options %s", json.dumps(dataclasses.asdict(opts)))
    try:
        return asyncio.run(serve(opts))
    except (ValueError, RuntimeError, OSError) as e:  # bad flags, port already in use
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description="semgen gRPC server")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
