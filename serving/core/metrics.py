"""Every Prometheus metric semgen serving exports (the only module that declares metrics).

Metrics live in their own CollectorRegistry, not prometheus_client's global one, so two
servers (or a server and a test) in one process never share or collide on counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

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
        # End-to-end, as the server sees an RPC: from handler entry to the final status.
        self.request_latency = Histogram(
            "semgen_request_latency_seconds", "gRPC request latency by method and final status code.",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(  # exported as semgen_requests_total
            "semgen_requests", "gRPC requests finished, by method and final status code.",
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
        # Iterative jobs (head fitting, SCS, SIE): how many run now, and how each ended
        # (ok, cancelled, deadline, invalid, error; rejected = over the running-jobs limit).
        self.jobs_running = Gauge(
            "semgen_jobs_running", "Iterative jobs running now, by op.", ["op"], registry=r,
        )
        self.jobs = Counter(  # exported as semgen_jobs_total
            "semgen_jobs", "Iterative jobs finished, by op and outcome.", ["op", "outcome"], registry=r,
        )

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.request_latency.labels(method=method, code=code).observe(seconds)
        self.requests.labels(method=method, code=code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def serve_http(self, host: str, port: int):
        """Serve /metrics from a daemon thread; returns the WSGI server (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
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
