"""The gRPC server bootstrap (the one module that wires serving together).

    semgen serve --models artifacts --port 50051 --metrics-port 9464
    python -m serving.server --models artifacts            # same flags, no CLI needed

Order of events: bind gRPC + metrics ports with health NOT_SERVING, load the models off the
event loop, attach them and switch health to SERVING. The bundle decides what is served:
PyramidService if <models>/pyramid exists, SemanticsService if <models>/stylegan exists,
ImagineService if <models>/classifier exists or --imagine-classifier is given, HiganService if
<models>/stylegan exists (its directions, boundaries/, and the attribute predictors that score edits are
optional: a call that needs a part the bundle lacks answers FAILED_PRECONDITION naming it); a service whose
model is missing answers NOT_FOUND and its health stays NOT_SERVING. Iterative jobs of every
service share one limit, --max-jobs.
Engines: --engine embedded (default) runs the models here, forward-only work on ONNX Runtime
through the dynamic batcher (--runtime onnx: the graphs `semgen export onnx` wrote to --onnx-dir) or
on eager torch (--runtime torch); --engine torchserve forwards to TorchServe
(serving/torchserve/gateway.py), running the archives `semgen export mar` wrote; --engine ray forwards to Ray
Serve replicas of the embedded engines (serving/ray/gateway.py).
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
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from serving.core.admission import Admission
from serving.core.auth import BearerTokenInterceptor
from serving.core.interceptors import TelemetryInterceptor
from serving.core.servicer import add_lenient_servicer
from serving.core.metrics import ServingMetrics
from serving.core.protos import HIGAN_SERVICE, IMAGINE_SERVICE, OIP_SERVICE, PYRAMID_SERVICE, SEMANTICS_SERVICE
from serving.engines import Engines, describe_models, load_embedded
from serving.higan.servicer import HiganServicer, add_higan_servicer
from serving.imagine.servicer import ImagineServicer, add_imagine_servicer
from serving.oip.http import create_app, start_http
from serving.oip.models import TensorModels
from serving.oip.servicer import InferenceServicer, add_inference_servicer
from serving.options import ServeOptions, add_arguments
from serving.pyramid.servicer import PyramidServicer, add_pyramid_servicer
from serving.semantics.servicer import SemanticsServicer, add_semantics_servicer
from serving.torchserve.gateway import load_torchserve

log = logging.getLogger("serving.server")


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
    tensor_models: TensorModels  # the Open Inference Protocol's models, over gRPC and HTTP


SERVICES = (PYRAMID_SERVICE, SEMANTICS_SERVICE, IMAGINE_SERVICE, HIGAN_SERVICE, OIP_SERVICE)


async def create_server(opts: ServeOptions, metrics: ServingMetrics) -> Gateway:
    """The gRPC server with every service registered and health NOT_SERVING, not started.
    Attach engines and set SERVING when they are loaded (`attach_engines`)."""
    token = opts.token
    server = grpc.aio.server(  # telemetry outermost: refused calls are logged and counted as UNAUTHENTICATED
        interceptors=[TelemetryInterceptor(metrics, opts.max_message_bytes),
                      *([BearerTokenInterceptor(token)] if token else [])],
        options=[
            ("grpc.max_send_message_length", opts.max_message_bytes),
            ("grpc.max_receive_message_length", opts.max_message_bytes),
        ],
    )
    admission = Admission(opts.max_decoded_bytes_in_flight)  # one budget of decoded bytes for every service
    pyramid = PyramidServicer(opts.limits, admission=admission)
    add_pyramid_servicer(server, pyramid)
    semantics = SemanticsServicer(opts.limits, admission=admission)
    add_semantics_servicer(server, semantics)
    imagine = ImagineServicer(opts.limits, admission=admission)
    add_imagine_servicer(server, imagine)
    higan = HiganServicer(opts.limits, admission=admission)
    add_higan_servicer(server, higan)
    tensor_models = TensorModels(opts.limits, admission)
    add_inference_servicer(server, InferenceServicer(tensor_models))
    health = health_aio.HealthServicer()
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    add_lenient_servicer(server, health_service, health)
    names = (*SERVICES, health_service.full_name, reflection.SERVICE_NAME)
    add_lenient_servicer(server, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
                         reflection.aio.ReflectionServicer(names))
    await set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)  # the default is SERVING
    return Gateway(server, health, pyramid, semantics, imagine, higan, tensor_models)


def add_port(server: grpc.aio.Server, opts: ServeOptions, address: str) -> int:
    """Bind `address`: TLS with --tls-cert/--tls-key (client certificates required with --tls-client-ca),
    else plaintext. Returns the port."""
    if not opts.tls_cert:
        return server.add_insecure_port(address)
    key, cert = Path(opts.tls_key).read_bytes(), Path(opts.tls_cert).read_bytes()
    client_ca = Path(opts.tls_client_ca).read_bytes() if opts.tls_client_ca else None
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                              require_client_auth=client_ca is not None)
    return server.add_secure_port(address, credentials)


async def set_health(health: health_aio.HealthServicer, status, services=("", *SERVICES)) -> None:
    for service in services:  # "" is the whole server
        await health.set(service, status)


async def attach_engines(gateway: Gateway, engines: Engines, models: str) -> None:
    """Attach what the bundle has, mark the rest not served, and switch health to SERVING."""
    served = [""]
    for servicer, engine, service, lacks in (
            (gateway.pyramid, engines.pyramid, PYRAMID_SERVICE, "has no pyramid/"),
            (gateway.semantics, engines.semantics, SEMANTICS_SERVICE, "has no stylegan/"),
            (gateway.imagine, engines.imagine, IMAGINE_SERVICE, "has no classifier/"),
            (gateway.higan, engines.higan, HIGAN_SERVICE, "has no stylegan/")):
        if engine is None:
            servicer.not_served(f"model: this server's bundle ({models}) {lacks}, so {service} is not served here")
        else:
            servicer.attach(engine)
            served.append(service)
    gateway.tensor_models.attach(engines.loaded(), engines.backend_up, engines.backend_degraded)
    served.append(OIP_SERVICE)
    await set_health(gateway.health, health_pb2.HealthCheckResponse.SERVING, served)


HEALTH_POLL_S = 1.0  # how often health looks at a backend that can go down on its own (TorchServe)


async def follow_backend(health: health_aio.HealthServicer, engines: Engines) -> None:
    """Keep the health of the services a separate backend runs (and of the whole server) on that backend's
    state: NOT_SERVING while it is down or restarting, SERVING once it is back."""
    services = ["", *(service for service, engine in ((PYRAMID_SERVICE, engines.pyramid),
                                                       (SEMANTICS_SERVICE, engines.semantics),
                                                       (IMAGINE_SERVICE, engines.imagine)) if engine is not None)]
    was_up = True
    while True:
        await asyncio.sleep(HEALTH_POLL_S)
        up = engines.backend_up()  # a poll of the process: no blocking
        if up != was_up:
            log.warning("backend %s: health %s", "back" if up else "down", "SERVING" if up else "NOT_SERVING")
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await set_health(health, status, services)
            was_up = up


async def serve(opts: ServeOptions,
                load_engines: Callable[[ServeOptions, ServingMetrics], Engines] = load_embedded) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code. `load_engines` runs in a thread."""
    opts.check()
    metrics = ServingMetrics()
    gateway = await create_server(opts, metrics)
    server, health = gateway.server, gateway.health

    port = add_port(server, opts, _hostport(opts.host, opts.port))  # raises if it cannot bind
    metrics_host = opts.metrics_host or opts.host
    metrics_http = metrics.serve_http(metrics_host, opts.metrics_port)
    await server.start()
    security = (f"{'mutual TLS' if opts.tls_client_ca else 'TLS' if opts.tls_cert else 'plaintext'}, "
                f"{'bearer token' if opts.token else 'no token'}")
    print(f"gRPC listening on {_hostport(opts.host, port)} ({security})", flush=True)
    print(f"metrics on http://{_hostport(metrics_host, metrics_http.server_port)}/metrics", flush=True)
    metrics.describe_build(opts.engine, opts.runtime)
    http = None
    if opts.http_port >= 0:
        http, http_port = await start_http(create_app(gateway.tensor_models, metrics, opts.token, opts.max_message_bytes),
                                           opts.http_host, opts.http_port, opts.http_tls_context())
        print(f"HTTP (Open Inference Protocol /v2, /healthz, /readyz) on {'https' if opts.tls_cert else 'http'}://"
              f"{_hostport(opts.http_host, http_port)}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    engines = Engines()
    code = 0
    started = time.perf_counter()
    if opts.engine == "torchserve" and load_engines is load_embedded:
        load_engines = load_torchserve
    elif opts.engine == "ray" and load_engines is load_embedded:
        from serving.ray.gateway import load_ray  # imports Ray: only for this engine

        load_engines = load_ray
    loading = asyncio.ensure_future(asyncio.to_thread(load_engines, opts, metrics))
    stopping = asyncio.ensure_future(stop.wait())
    following = None
    try:
        await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engines = loading.result()  # a load error propagates to the except below
            await attach_engines(gateway, engines, opts.models)
            describe_models(metrics, engines, gateway.tensor_models, opts)
            if engines.backend_up is not None:
                following = asyncio.ensure_future(follow_backend(health, engines))
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
        if following is not None:
            following.cancel()
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
        if http is not None:
            await http.cleanup()
    print("stopped", flush=True)
    return code


def run(opts: ServeOptions) -> int:
    """Entry point for `semgen serve` (and `python -m serving.server`)."""
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
    return run(ServeOptions.from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
