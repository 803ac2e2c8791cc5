"""Every Prometheus metric semgen serving exports (the only module that declares metrics).

Metrics live in their own CollectorRegistry, not prometheus_client's global one, so two
servers (or a server and a test) in one process never share or collide on counters.
"""

from __future__ import annotations

import platform
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# 1 ms .. 60 s: a health check is ~1 ms, a large CPU generation can take tens of seconds.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)


class ServingMetrics:
    """The serving metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_* (CPU, RSS, open fds, start time), python_info, python_gc_*: what every exporter has
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(_GpuCollector())
        self.build = Info("semgen_build", "The running semgen: version, Python, engine and runtime.", registry=r)
        self.model_info = Gauge(
            "semgen_model_info", "1 for every model served: its weights fingerprint and where it runs.",
            ["model", "fingerprint", "runtime"], registry=r,
        )
        # End-to-end, as the server sees an RPC: from handler entry to the final status.
        self.request_latency = Histogram(
            "semgen_request_latency_seconds", "gRPC request latency by method and final status code.",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(  # exported as semgen_requests_total
            "semgen_requests", "gRPC requests finished, by method and final status code.",
            ["method", "code"], registry=r,
        )
        # liveness/readiness probes and reflection: polled by machines, kept out of the request series
        # (a reflection stream ends CANCELLED, and would read as an error)
        self.probes = Counter(  # exported as semgen_probes_total
            "semgen_probes", "Health, readiness and reflection calls, by method and final status code.",
            ["method", "code"], registry=r,
        )
        self.in_flight = Gauge(
            "semgen_requests_in_flight", "gRPC requests being handled now.", ["method"], registry=r,
        )
        # Inside the engine: time waiting for a worker thread, and time computing.
        self.engine_queue_latency = Histogram(
            "semgen_engine_queue_seconds", "Time an engine call waits: for a free worker, or for its batch to start.",
            ["op"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.engine_compute_latency = Histogram(
            "semgen_engine_compute_seconds", "Time an engine call computes (a batched call: its whole batch's graph run).",
            ["op"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "semgen_batch_size", "Requests per batched graph run.", ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r,
        )
        self.engine_queue_depth = Gauge(
            "semgen_engine_queue_depth", "Engine calls waiting for a worker or a batch.", registry=r,
        )
        self.engine_queue_limit = Gauge(
            "semgen_engine_queue_limit", "Engine calls that may wait before more are refused (RESOURCE_EXHAUSTED), "
            "summed over the engine's queues.", registry=r,
        )
        self.backend_degraded = Gauge(
            "semgen_backend_degraded", "1 while the backend serves with replicas missing (Ray Serve: a deployment "
            "not HEALTHY, e.g. after a node was lost), else 0.", registry=r,
        )
        self.backend_replicas = Gauge(
            "semgen_backend_replicas", "Replicas running now, by Ray Serve application (autoscaling moves the "
            "forward one between --ray-replicas and --ray-max-replicas).", ["application"], registry=r,
        )
        # Iterative jobs (head fitting, SCS, SIE): how many run now, and how each ended
        # (ok, cancelled, deadline, invalid, error; rejected = over the running-jobs limit).
        self.jobs_running = Gauge(
            "semgen_jobs_running", "Iterative jobs running now, by op.", ["op"], registry=r,
        )
        self.jobs = Counter(  # exported as semgen_jobs_total
            "semgen_jobs", "Iterative jobs finished, by op and outcome.", ["op", "outcome"], registry=r,
        )

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        if is_probe(method):
            self.probes.labels(method=method, code=code).inc()
            return
        self.request_latency.labels(method=method, code=code).observe(seconds)
        self.requests.labels(method=method, code=code).inc()

    def describe_build(self, engine: str, runtime: str) -> None:
        self.build.info({"version": semgen_version(), "python": platform.python_version(), "engine": engine,
                         "runtime": runtime})

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def serve_http(self, host: str, port: int):
        """Serve /metrics (and nothing else: 404) from a daemon thread; returns the WSGI server (port 0 picks one)."""
        exposition = make_wsgi_app(self.registry)

        def only_metrics(environ, start_response):
            if environ.get("PATH_INFO") == "/metrics":
                return exposition(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: this port serves /metrics only (health: /healthz on the HTTP port)\n"]

        server_class = _MetricsServer6 if ":" in host else _MetricsServer
        server = make_server(host, port, only_metrics, server_class, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="semgen-metrics", daemon=True).start()
        return server

    def backend_reply(self, model: str, op: str, waited_s: float, reply: dict) -> None:
        """The first reply of a call to a backend (TorchServe, Ray Serve): the call's time in the backend's queue
        (the wait less the compute the reply reports), its compute, and the batch size a batch's first reply
        carries."""
        compute = float(reply.get("compute_seconds", 0.0))
        self.engine_queue_latency.labels(op=op).observe(max(0.0, waited_s - compute))
        self.engine_compute_latency.labels(op=op).observe(compute)
        if reply.get("batch_size"):
            self.batch_size.labels(model=model).observe(reply["batch_size"])


PROBE_METHODS = ("grpc.health.", "grpc.reflection.", "inference.GRPCInferenceService/ServerLive",
                 "inference.GRPCInferenceService/ServerReady", "inference.GRPCInferenceService/ModelReady",
                 "http/health", "http/ModelReady")


def is_probe(method: str) -> bool:
    return method.startswith(PROBE_METHODS)


def semgen_version() -> str:
    """The installed package's version ("0+unknown" when run from a checkout that was not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("semgen")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class _GpuCollector:
    """semgen_gpu_memory_{allocated,reserved,total}_bytes{device} per CUDA device, when this process runs torch on
    one (nothing otherwise: torch is never imported for this)."""

    def collect(self):
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        families = {name: GaugeMetricFamily(f"semgen_gpu_memory_{name}_bytes", f"CUDA memory {name}, by device.",
                                            labels=["device"]) for name in ("allocated", "reserved", "total")}
        for i in range(torch.cuda.device_count()):
            device = str(i)
            families["allocated"].add_metric([device], torch.cuda.memory_allocated(i))
            families["reserved"].add_metric([device], torch.cuda.memory_reserved(i))
            families["total"].add_metric([device], torch.cuda.get_device_properties(i).total_memory)
        yield from families.values()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # scrapes every few seconds: no access log
        pass


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6
