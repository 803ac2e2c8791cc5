"""`semgen serve` options: one dataclass (its flags come from semgen.options) and its checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from semgen.options import add_options, opt, options_from_args
from serving.core.auth import check_exposure, read_token
from serving.core.batcher import BatchPolicy
from serving.core.validation import Limits

MiB = 1024 * 1024


ENGINES = ("embedded", "torchserve", "ray")


@dataclass(frozen=True)
class ServeOptions:
    models: str = opt("artifacts", "model bundle folder: classifier/ + pyramid/ and/or stylegan/ (+ segmenter/, "
                                   "heads/, attributes/, boundaries/)")
    classifier: str = opt("", "use this classifier instead of <models>/classifier: a checkpoint folder or "
                              "torchvision-vgg16:PATH")
    imagine_classifier: str = opt("", "IMAGINE's classifier instead of <models>/classifier: a checkpoint folder, "
                                      "torchvision-vgg16:PATH or torchvision-resnet50:PATH")
    heads_dir: str = opt("var/heads", "where FitHead saves user heads (and loads them on start)")
    host: str = opt("127.0.0.1", "address to bind gRPC (and metrics, unless --metrics-host) on; one that is not "
                                 "loopback needs --tls-cert/--tls-key or a token (--token-file, $SEMGEN_TOKEN), "
                                 "or --insecure")
    tls_cert: str = opt("", "server certificate chain PEM: gRPC over TLS (with --tls-key)")
    tls_key: str = opt("", "the server certificate's private key PEM")
    tls_client_ca: str = opt("", "CA PEM that client certificates must be signed by: mutual TLS, a client without "
                                 "one is refused (needs --tls-cert)")
    token_file: str = opt("", "file holding the bearer token every call but grpc.health.v1 must carry "
                              "('authorization: Bearer <token>'); default: $SEMGEN_TOKEN if set, else no token")
    insecure: bool = opt(False, "allow a non-loopback --host without TLS or a token (anyone who reaches the port "
                                "can call every RPC)")
    metrics_host: str = opt("", "address to bind the plaintext, unauthenticated /metrics on; empty: --host")
    port: int = opt(50051, "gRPC port; 0 picks a free one")
    metrics_port: int = opt(9464, "Prometheus /metrics port (it answers /metrics only)")
    http_port: int = opt(8000, "HTTP port: the Open Inference Protocol's REST API (/v2/...), /healthz and /readyz; "
                               "-1: off")
    http_host: str = opt("127.0.0.1", "address to bind the HTTP port on (TLS and the token as for gRPC); one that is "
                                      "not loopback needs TLS or a token, or --insecure")
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1")
    workers: int = opt(1, "engine threads running the model")
    engine: str = opt("embedded", "where inference runs: in this process; on TorchServe (started here on "
                                  "loopback from the archives of `semgen export mar --store`, or at "
                                  "--torchserve-address); or on Ray Serve replicas (a local Ray, or --ray-address)",
                      choices=ENGINES)
    torchserve_address: str = opt("", "inference URL of a running TorchServe with semgen's models (semgen export "
                                      "mar), e.g. http://127.0.0.1:8080; empty: start one")
    torchserve_key_file: str = opt("", "that TorchServe's key_file.json, when it asks for tokens (TorchServe 0.12's "
                                       "default); one we start always does, with its own keys")
    torchserve_dir: str = opt("var/torchserve", "the started TorchServe's model store (<dir>/store, written by "
                                                "`semgen export mar --store`) and logs")
    ray_address: str = opt("", "with --engine ray: the cluster to deploy on (auto, ray://host:10001); empty: a "
                               "local Ray on 127.0.0.1, stopped with the server")
    ray_replicas: int = opt(1, "with --engine ray: replicas of the forward models (autoscaled from here up to "
                               "--ray-max-replicas when that is higher)")
    ray_max_replicas: int = opt(0, "with --engine ray: the most forward replicas autoscaling may run (0: fixed)")
    ray_upscale_delay_s: float = opt(30.0, "with --ray-max-replicas: seconds the load stays above the target "
                                           "before Serve adds a forward replica (Ray Serve's upscale_delay_s)")
    ray_downscale_delay_s: float = opt(600.0, "with --ray-max-replicas: seconds it stays below before Serve "
                                              "removes one (Ray Serve's downscale_delay_s)")
    ray_job_replicas: int = opt(1, "with --engine ray: replicas for the iterative jobs (--max-jobs each)")
    ray_replica_cpus: float = opt(1.0, "with --engine ray: CPUs Ray reserves for each replica")
    ray_replica_gpus: float = opt(0.0, "with --engine ray: GPUs each replica takes (a fraction shares one; its "
                                       "models then run on CUDA there)")
    ray_bundle_cache: str = opt("", "with --engine ray: where each node keeps the bundles the gateway sends its "
                                    "replicas through Ray's object store (default: <tmp>/semgen-bundles)")
    runtime: str = opt("onnx", "forward-only work (Generate, Repaint, Composite, Sample, Segment) on ONNX Runtime "
                               "with the dynamic batcher, or on eager torch one call at a time",
                       choices=("onnx", "torch"))
    onnx_dir: str = opt("var/onnx", "cache of exported graphs: <onnx-dir>/<fingerprint of the weights>/, written by "
                                    "`semgen export onnx --cache`")
    ort_threads: int = opt(2, "ONNX Runtime intra-op threads")
    max_batch: int = opt(8, "requests per batched graph run")
    max_batch_delay_ms: float = opt(5.0, "how long the oldest request waits for others to batch with")
    max_queue: int = opt(64, "requests waiting for a batch (with --engine torchserve: calls waiting for "
                             "TorchServe); more are refused with RESOURCE_EXHAUSTED")
    max_batch_bytes: int = opt(1024 * MiB, "estimated working memory of one batched graph run (generated images, the "
                                          "features a head reads, its logits): a batch is cut here as well as at "
                                          "--max-batch, so large generators batch fewer requests")
    max_request_working_bytes: int = opt(4096 * MiB, "largest estimated working memory of one Sample, Segment, "
                                                     "FitHead or SampleConditional (samples x the generator's bytes "
                                                     "per sample); over it is refused with INVALID_ARGUMENT before "
                                                     "any work")
    max_samples: int = opt(16, "largest num_samples per request")
    max_image_bytes: int = opt(8 * MiB, "largest encoded reference image")
    max_image_pixels: int = opt(4096 * 4096, "largest reference width*height")
    max_request_decoded_bytes: int = opt(64 * MiB, "largest decoded size of one request's images (w*h*3) and masks "
                                                   "(w*h*4), read from their headers before decoding; over it is "
                                                   "refused with INVALID_ARGUMENT")
    max_decoded_bytes_in_flight: int = opt(512 * MiB, "server-wide budget of decoded image and mask bytes in flight; "
                                                      "a request over it is refused at once with RESOURCE_EXHAUSTED")
    max_message_bytes: int = opt(64 * MiB, "gRPC send/receive message limit")
    max_jobs: int = opt(2, "iterative jobs (FitHead, SampleConditional, EditSemantics, Imagine) running at once")
    max_iterations: int = opt(500, "largest iterations of SampleConditional/EditSemantics")
    max_fit_iterations: int = opt(2000, "largest iterations of FitHead")
    max_user_heads: int = opt(64, "user heads FitHead keeps in --heads-dir; a new one over it is refused with "
                                  "RESOURCE_EXHAUSTED (replacing a head is not a new one)")
    max_heads_bytes: int = opt(256 * MiB, "bytes the user heads in --heads-dir may take on disk; a FitHead over it "
                                          "is refused with RESOURCE_EXHAUSTED")
    max_candidates: int = opt(256, "largest n_init (random latents per sample) of SampleConditional")
    max_imagine_iterations: int = opt(5000, "largest stage1/stage2 iterations of Imagine")
    max_job_seconds: float = opt(600.0, "the server's deadline for every iterative job (FitHead, SampleConditional, "
                                        "EditSemantics, Imagine), on either engine; a client's shorter deadline wins")
    grace_seconds: float = opt(10.0, "time in-flight RPCs get on shutdown")
    log_level: str = opt("INFO", "DEBUG, INFO, WARNING, ...")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeOptions":
        return options_from_args(cls, args)

    def check(self) -> None:
        check_exposure(self.host, self.tls_cert, self.tls_key, self.tls_client_ca, self.token, self.insecure)
        if self.http_port >= 0:
            check_exposure(self.http_host, self.tls_cert, self.tls_key, self.tls_client_ca, self.token, self.insecure,
                           host_flag="--http-host")
        if min(self.max_samples, self.workers, self.max_jobs, self.max_iterations, self.max_fit_iterations,
               self.max_candidates, self.max_imagine_iterations, self.max_job_seconds) <= 0:
            raise ValueError("--max-samples, --workers, --max-jobs, --max-iterations, --max-fit-iterations, "
                             "--max-candidates and --max-imagine-iterations must be >= 1, --max-job-seconds > 0")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine != "ray" and self.ray_address:
            raise ValueError("--ray-address goes with --engine ray")
        if min(self.ray_replicas, self.ray_job_replicas) < 1 or self.ray_replica_cpus <= 0 or self.ray_replica_gpus < 0:
            raise ValueError("--ray-replicas and --ray-job-replicas must be >= 1, --ray-replica-cpus > 0, "
                             "--ray-replica-gpus >= 0")
        if min(self.ray_upscale_delay_s, self.ray_downscale_delay_s) < 0:
            raise ValueError("--ray-upscale-delay-s and --ray-downscale-delay-s must be >= 0")
        if self.torchserve_address and not self.torchserve_address.startswith("http://"):
            raise ValueError(f"--torchserve-address must be an http:// URL, got {self.torchserve_address!r}")
        if self.torchserve_key_file and not (self.torchserve_address and Path(self.torchserve_key_file).is_file()):
            raise ValueError("--torchserve-key-file must name an existing file, and goes with --torchserve-address, "
                             f"got {self.torchserve_key_file!r}")
        if self.engine == "torchserve" and self.runtime != "onnx":
            raise ValueError("--engine torchserve runs the forward work on ONNX Runtime; drop --runtime torch")
        if self.engine == "torchserve" and (self.classifier or self.imagine_classifier):
            raise ValueError("--classifier and --imagine-classifier work with --engine embedded or ray only "
                             "(the .mar archives carry the bundle's own classifier)")
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"--runtime must be onnx or torch, got {self.runtime!r}")
        self.batch_policy.check()
        if self.ort_threads < 1:
            raise ValueError("--ort-threads must be >= 1")
        from serving.semantics.validation import MAX_HEAD_INFO_BYTES  # here: `serve --help` stays light

        if min(self.max_user_heads, self.max_heads_bytes) < 1:
            raise ValueError("--max-user-heads and --max-heads-bytes must be >= 1")
        if self.max_user_heads * MAX_HEAD_INFO_BYTES > self.max_message_bytes // 2:
            raise ValueError(f"--max-user-heads: {self.max_user_heads} user heads can make a ListHeads reply of "
                             f"{self.max_user_heads * MAX_HEAD_INFO_BYTES} bytes (up to {MAX_HEAD_INFO_BYTES} each), "
                             f"over half of --max-message-bytes; lower it or raise --max-message-bytes")
        if self.max_image_pixels * 3 > self.max_request_decoded_bytes:
            raise ValueError(f"--max-request-decoded-bytes must fit one image of --max-image-pixels "
                             f"(x3 bytes, RGB): at least {self.max_image_pixels * 3}")
        if self.max_request_decoded_bytes > self.max_decoded_bytes_in_flight:
            raise ValueError("--max-request-decoded-bytes must not be over --max-decoded-bytes-in-flight")
        if self.max_image_bytes >= self.max_message_bytes:
            raise ValueError("--max-image-bytes must be below --max-message-bytes (the image travels inside a message)")

    @property
    def token(self) -> str:
        """The bearer token (--token-file, else $SEMGEN_TOKEN); "" for none."""
        return read_token(self.token_file)

    def http_tls_context(self):
        """The HTTP port's TLS: the gRPC port's certificate (and client CA); None without --tls-cert."""
        if not self.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            context.load_verify_locations(self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(self.max_batch, self.max_batch_delay_ms / 1000, self.max_queue, self.max_batch_bytes)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_samples, self.max_image_bytes, self.max_image_pixels, self.max_iterations,
                      self.max_fit_iterations, self.max_candidates, self.max_imagine_iterations,
                      max_request_decoded_bytes=self.max_request_decoded_bytes,
                      max_request_working_bytes=self.max_request_working_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags on `parser` (for `python -m serving.server` and tests); ServeOptions.from_args reads them."""
    add_options(parser, ServeOptions)
