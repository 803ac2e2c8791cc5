"""Helpers shared by the serving tests (imported by name; conftest puts this folder on sys.path)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
from PIL import Image

import grpc
import pytest

from serving.pyramid.engine import EmbeddedEngine
from serving.higan.engine import EmbeddedHiganEngine
from serving.imagine.engine import EmbeddedImagineEngine
from serving.core.metrics import ServingMetrics
from serving.core.protos import pyramid_pb2 as pb, pyramid_pb2_grpc
from serving.semantics.engine import EmbeddedSemanticsEngine
from serving.bench.process import server_process
from serving.engines import Engines
from serving.options import ServeOptions
from serving.server import attach_engines, create_server

SEMANTICS_IMAGE_SIZE = 16  # the tiny semantics bundle the semantics tests share
LEVELS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8")


def png_bytes(width: int = 24, height: int = 16, color=(200, 30, 40), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, format=fmt)
    return buf.getvalue()


class FakePipeline:
    """Stands in for PyramidPipeline: deterministic noise images from the seed.

    Magic seeds exercise the engine's error paths: 666 raises a RuntimeError (a bug),
    777 raises the pipeline's ValueError for bad input, 888 returns one image too few.
    `gate` (if set) blocks generation until the test releases it.
    """

    image_size = 8
    class_names = ("beach", "lake", "forest")

    def __init__(self):
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls: list[tuple[str, dict]] = []  # (operation, its arguments) as the engine passed them

    def generate(self, image, levels, num_samples, seed, class_index=None):
        deepest = max(levels, key=LEVELS.index)
        return self._images("generate", dict(image=image, levels=levels), deepest, num_samples, seed, class_index)

    def repaint(self, image, region, level, num_samples, seed, class_index=None):
        return self._images("repaint", dict(image=image, region=region), level, num_samples, seed, class_index)

    def composite(self, image, object_image, box, level, num_samples, seed, class_index=None):
        args = dict(image=image, object_image=object_image, box=box)
        return self._images("composite", args, level, num_samples, seed, class_index)

    def _images(self, op, args, level, num_samples, seed, class_index):
        self.calls.append((op, args))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if seed == 666:
            raise RuntimeError("secret internals /home/model/weights.bin")
        if seed == 777:
            raise ValueError("image: too small (2x2); need at least 8x8")
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (num_samples - (seed == 888), 8, 8, 3), dtype=np.uint8)
        return SimpleNamespace(images=images, class_index=0 if class_index is None else class_index, level=level)


@contextlib.asynccontextmanager
async def in_process_server(pipeline=None, **options):
    """The real gRPC server (create_server) on a free loopback port, with `pipeline` attached."""
    opts = ServeOptions(port=0, **options)
    metrics = ServingMetrics()
    gateway = await create_server(opts, metrics)
    port = gateway.server.add_insecure_port("127.0.0.1:0")
    await gateway.server.start()
    engine = None
    if pipeline is not None:
        engine = EmbeddedEngine(pipeline, LEVELS, metrics=metrics)
        await attach_engines(gateway, Engines(pyramid=engine), "fake")
    try:
        yield SimpleNamespace(address=f"127.0.0.1:{port}", metrics=metrics, pipeline=pipeline, gateway=gateway)
    finally:
        await gateway.server.stop(0)
        if engine is not None:
            await engine.close()


@contextlib.asynccontextmanager
async def in_process_semantics_server(models, heads_dir, **options):
    """The real gRPC server with an EmbeddedSemanticsEngine on the bundle in `models` (CPU)."""
    opts = ServeOptions(port=0, models=str(models), heads_dir=str(heads_dir), **options)

    def load(metrics):
        engine = EmbeddedSemanticsEngine.from_dir(models, heads_dir, device="cpu", max_jobs=opts.max_jobs,
                                                  metrics=metrics, max_user_heads=opts.max_user_heads,
                                                  max_heads_bytes=opts.max_heads_bytes)
        return engine, Engines(semantics=engine)

    async with _in_process_engine(opts, load) as server:
        yield server


@contextlib.asynccontextmanager
async def in_process_imagine_server(models, **options):
    """The real gRPC server with an EmbeddedImagineEngine on <models>/classifier (CPU)."""
    opts = ServeOptions(port=0, models=str(models), **options)

    def load(metrics):
        engine = EmbeddedImagineEngine.from_dir(models, opts.imagine_classifier or None, device="cpu",
                                                max_jobs=opts.max_jobs, metrics=metrics)
        return engine, Engines(imagine=engine)

    async with _in_process_engine(opts, load) as server:
        yield server


@contextlib.asynccontextmanager
async def in_process_higan_server(models, **options):
    """The real gRPC server with an EmbeddedHiganEngine on the bundle in `models` (CPU)."""
    opts = ServeOptions(port=0, models=str(models), **options)

    def load(metrics):
        engine = EmbeddedHiganEngine.from_dir(models, device="cpu", workers=opts.workers, metrics=metrics)
        return engine, Engines(higan=engine)

    async with _in_process_engine(opts, load) as server:
        yield server


@contextlib.asynccontextmanager
async def _in_process_engine(opts: ServeOptions, load):
    """The real gRPC server (create_server) on a free loopback port with the engine that
    `load(metrics)` returns as (engine, Engines) attached; closes the engine at the end."""
    metrics = ServingMetrics()
    gateway = await create_server(opts, metrics)
    port = gateway.server.add_insecure_port("127.0.0.1:0")
    await gateway.server.start()
    engine, engines = load(metrics)
    await attach_engines(gateway, engines, opts.models)
    try:
        yield SimpleNamespace(address=f"127.0.0.1:{port}", metrics=metrics, engine=engine)
    finally:
        await gateway.server.stop(0)
        await engine.close()


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` for a while (tiny models run fastest on one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def image_meta(data: bytes):
    """(format, mode, size) of encoded image bytes."""
    image = Image.open(io.BytesIO(data))
    return image.format, image.mode, image.size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_value(metrics: ServingMetrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()



GENERATE_METHOD = "/semgen.v1.PyramidService/Generate"


async def call(address: str, method: str, request, metadata=None, timeout: float = 10.0):
    """One PyramidService call on a fresh aio channel: (reply, None) or (None, grpc.aio.AioRpcError)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            rpc = getattr(pyramid_pb2_grpc.PyramidServiceStub(channel), method)
            return await rpc(request, metadata=metadata, timeout=timeout), None
        except grpc.aio.AioRpcError as e:
            return None, e


async def generate(address: str, request: pb.GenerateRequest, metadata=None, timeout: float = 10.0):
    return await call(address, "Generate", request, metadata, timeout)


async def generate_raw(address: str, payload: bytes, timeout: float = 10.0):
    """Send `payload` as the Generate request bytes, bypassing the client-side serializer."""
    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary(GENERATE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            return await raw(payload, timeout=timeout), None
        except grpc.aio.AioRpcError as e:
            return None, e


@contextlib.contextmanager
def in_thread(server_context, timeout: float = 30.0):
    """Run an async server context manager (e.g. in_process_semantics_server) on an event loop in
    a background thread, so blocking clients and module-scoped fixtures can use it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(server_context.__aenter__(), loop).result(timeout)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server_context.__aexit__(None, None, None), loop).result(timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()



def build_exports(args: list[str]) -> None:
    """What `semgen serve ARGS` opens, built as `make serve` builds it: the bundle's ONNX graphs in --onnx-dir
    and, for --engine torchserve, the archives in <--torchserve-dir>/store for the same settings."""
    from export.mar import ensure_mars
    from export.onnx import ensure_exported
    from semgen.bundle import torchserve_settings
    from serving.options import ServeOptions, add_arguments
    from serving.torchserve.gateway import HANDLER

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = ServeOptions.from_args(parser.parse_args(args))
    if opts.runtime == "onnx":
        ensure_exported(opts.models, opts.onnx_dir)
    if opts.engine == "torchserve":
        settings = torchserve_settings(opts.max_batch, opts.max_batch_delay_ms, opts.ort_threads)
        ensure_mars(HANDLER, opts.models, f"{opts.torchserve_dir}/store", opts.onnx_dir, **settings)


@contextlib.contextmanager
def serve_subprocess(args: list[str], env: dict[str, str] | None = None):
    """`semgen serve ARGS` (its exports built first) in its own process on free loopback ports, with `env` added
    to its environment; yields its address once SERVING."""
    build_exports(args)
    with server_process(args, env=env) as server:
        yield server


# ---- fixtures the semantics tests share (import them into a test module to use them there) ----------

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models run fastest on one thread, and the machine is shared
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", name="bundle")
def semantics_bundle(tmp_path_factory):
    """`bundle`: a tiny random semantics bundle at SEMANTICS_IMAGE_SIZE."""
    from random_bundles import make_random_semantics_bundle

    return make_random_semantics_bundle(tmp_path_factory.mktemp("bundle"), image_size=SEMANTICS_IMAGE_SIZE)
