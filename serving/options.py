"""`semgen serve` options: one dataclass, its flags and its checks."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from serving.core.batcher import BatchPolicy
from serving.core.validation import Limits

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
