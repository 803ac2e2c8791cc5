"""A `semgen serve` subprocess for benches and tests: its exports made by the export commands when missing,
started on free loopback ports, yielded once SERVING, always stopped; CPU time of a process tree; its metrics."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from semgen.bundle import Bundle, torchserve_settings

START_TIMEOUT_S, STOP_GRACE_S = 180, 45  # the grace outlasts TorchServe's own 30 s stop


class ServerFailed(RuntimeError):
    def __init__(self, reason: str, tail: list[str]):
        super().__init__(f"{reason}; server output:\n" + "\n".join(tail))
        self.reason, self.tail = reason, tail


@dataclass(frozen=True)
class ServerProcess:
    address: str  # gRPC host:port
    metrics_url: str
    pid: int
    http_url: str = ""  # the HTTP port (Open Inference Protocol, /healthz): http://host:port


@contextlib.contextmanager
def server_process(args: list[str], name: str = "server", env: dict[str, str] | None = None):
    """`semgen serve --port 0 --metrics-port 0 --http-port 0 ARGS` in its own process group, with `env` added to
    this process's environment; yields a ServerProcess once it says health SERVING (ServerFailed otherwise) and
    always stops it: SIGTERM, SIGKILL after STOP_GRACE_S."""
    cmd = [sys.executable, "-m", "serving.server", "--port", "0", "--metrics-port", "0", "--http-port", "0", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    output, seen, done = collections.deque(maxlen=200), {}, threading.Event()

    def read():  # drains the pipe (a full one would block the server) and watches for its lines
        for line in proc.stdout:
            output.append(line.rstrip())
            for key, pattern in (("address", r"gRPC listening on (\S+)"), ("metrics_url", r"metrics on (\S+)"),
                                 ("http_url", r"/readyz\) on (\S+)")):
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
        yield ServerProcess(seen["address"], seen["metrics_url"], proc.pid, seen.get("http_url", ""))
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the server drains and closes its engines (TorchServe too)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def export_onnx(models: str, onnx_dir: str) -> None:
    """The bundle's ONNX graphs in `onnx_dir` (what the server opens), exported as a user would when missing."""
    if not Bundle(models).onnx_up_to_date(onnx_dir):
        subprocess.run([sys.executable, "-m", "semgen_cli", "export", "onnx", "--models", models, "--cache", onnx_dir],
                       check=True, stdout=subprocess.DEVNULL)


def export_torchserve(models: str, onnx_dir: str, torchserve_dir: str, max_batch: int = 8,
                      max_batch_delay_ms: float = 5.0, ort_threads: int = 2) -> None:
    """The archives `semgen serve --engine torchserve` opens for these settings (the server's defaults), in
    <torchserve_dir>/store, built by `semgen export mar` when missing."""
    from serving.torchserve.gateway import HANDLER

    settings = torchserve_settings(max_batch, max_batch_delay_ms, ort_threads)
    store = Path(torchserve_dir) / "store"
    if not (Bundle(models).mar_store_dir(store, HANDLER, settings) / "mars.json").exists():
        subprocess.run([sys.executable, "-m", "semgen_cli", "export", "mar", "--models", models, "--store",
                        str(store), "--handler", str(HANDLER), "--onnx-cache", onnx_dir,
                        "--batch-size", str(max_batch), "--max-batch-delay-ms", str(max_batch_delay_ms),
                        "--ort-threads", str(ort_threads)], check=True, stdout=subprocess.DEVNULL)


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


def metric_samples(metrics_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of the metric `name` on a server's /metrics, read with Prometheus' parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system
