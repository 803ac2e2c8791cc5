"""What a bundle serves (`Engines`) and loading it into the embedded engines, from the bundle and its
ONNX export (made beforehand by `semgen export onnx`; the server only opens it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from semgen.bundle import SERVICE_FOLDERS, Bundle, Service
from serving.core.jobs import JobRunner
from serving.core.metrics import ServingMetrics
from serving.higan.engine import EmbeddedHiganEngine, HiganEngine
from serving.imagine.engine import EmbeddedImagineEngine, ImagineEngine
from serving.options import ServeOptions
from serving.pyramid.engine import EmbeddedEngine, Engine
from serving.semantics.engine import EmbeddedSemanticsEngine, SemanticsEngine

log = logging.getLogger("serving.server")


@dataclass
class Engines:
    """What a bundle serves; None where it has no model for a service."""

    pyramid: Engine | None = None
    semantics: SemanticsEngine | None = None
    imagine: ImagineEngine | None = None
    higan: HiganEngine | None = None
    # whether the separate backend that runs pyramid, semantics and imagine (TorchServe) is up; None: in process
    backend_up: Callable[[], bool] | None = None
    # what capacity the backend lacks while it still serves ("" when none; Ray: replicas lost with a node)
    backend_degraded: Callable[[], str] | None = None

    def loaded(self) -> list:
        return [e for e in (self.pyramid, self.semantics, self.imagine, self.higan) if e is not None]


def load_embedded(opts: ServeOptions, metrics: ServingMetrics) -> Engines:
    """Load every model the bundle has (blocking; runs in a thread)."""
    bundle = Bundle(opts.models)
    imagine = bundle.serves(Service.IMAGINE) or bool(opts.imagine_classifier)
    if not bundle.has("pyramid") and not bundle.serves(Service.SEMANTICS) and not imagine:
        raise FileNotFoundError(f"{bundle} has none of pyramid/, stylegan/ and classifier/ (and no --imagine-classifier)")
    engines = Engines()
    # one limit for the iterative jobs of every service, and one deadline
    jobs = JobRunner(opts.max_jobs, metrics, max_seconds=opts.max_job_seconds)
    onnx, policy = exported_models(opts)
    if bundle.has("pyramid"):
        # a --classifier other than the bundle's was not exported: that pyramid runs on torch
        engines.pyramid = EmbeddedEngine.from_dir(bundle.root, device=opts.device, workers=opts.workers,
                                                  metrics=metrics, classifier=opts.classifier or None,
                                                  onnx=None if opts.classifier else onnx,
                                                  policy=None if opts.classifier else policy)
    if bundle.serves(Service.SEMANTICS):
        engines.semantics = EmbeddedSemanticsEngine.from_dir(bundle.root, opts.heads_dir, device=opts.device,
                                                             workers=opts.workers, metrics=metrics, jobs=jobs,
                                                             onnx=onnx, policy=policy,
                                                             max_user_heads=opts.max_user_heads,
                                                             max_heads_bytes=opts.max_heads_bytes)
    if imagine:
        engines.imagine = EmbeddedImagineEngine.from_dir(bundle.root, opts.imagine_classifier or None,
                                                         device=opts.device, metrics=metrics, jobs=jobs)
    engines.higan = embedded_higan(opts, metrics)
    return engines


def embedded_higan(opts: ServeOptions, metrics: ServingMetrics) -> HiganEngine | None:
    """HiGAN runs embedded with either engine (it is not a TorchServe model)."""
    bundle = Bundle(opts.models)
    if not bundle.serves(Service.HIGAN):
        log.info("HiganService not served: %s has no %s", bundle, ", ".join(bundle.missing(Service.HIGAN)))
        return None
    return EmbeddedHiganEngine.from_dir(bundle.root, device=opts.device, workers=opts.workers, metrics=metrics)


def exported_models(opts: ServeOptions):
    """(OnnxModels, BatchPolicy) for --runtime onnx, opened from the bundle's export in --onnx-dir (ExportMissing,
    naming the command to run, when it is missing or was made from other weights); (None, None) for --runtime torch."""
    if opts.runtime != "onnx":
        return None, None
    from semgen.runtime.onnx import OnnxModels

    folder = Bundle(opts.models).exported_onnx(opts.onnx_dir)
    log.info("ONNX graphs of %s in %s", opts.models, folder)
    return OnnxModels(folder, opts.ort_threads, opts.device), opts.batch_policy


def describe_models(metrics: ServingMetrics, engines: Engines, tensor_models, opts: ServeOptions) -> None:
    """semgen_model_info, one series per model: each exported graph served by tensor (its .onnx file's fingerprint),
    and each service that runs no such graph (the fingerprint of its bundle folders), with where it runs."""
    bundle = Bundle(opts.models)
    forward = opts.engine if opts.engine != "embedded" else "onnxruntime" if opts.runtime == "onnx" else "torch"
    for service, engine in ((Service.PYRAMID, engines.pyramid), (Service.SEMANTICS, engines.semantics),
                            (Service.IMAGINE, engines.imagine), (Service.HIGAN, engines.higan)):
        if engine is not None and not getattr(engine, "graphs", None):  # else: its graphs, below
            # IMAGINE and HiGAN are iterative: eager torch (on the engine's nodes)
            runtime = forward if service in (Service.PYRAMID, Service.SEMANTICS) else \
                "torch" if opts.engine == "embedded" or service == Service.HIGAN else opts.engine
            folders = tuple(f for f in SERVICE_FOLDERS[service] if (bundle.root / f).exists())
            metrics.model_info.labels(model=service.value, fingerprint=bundle.fingerprint(folders)[:16],
                                      runtime=runtime).set(1)
    for model in tensor_models.models():
        metrics.model_info.labels(model=model.spec.name, fingerprint=model.version, runtime="onnxruntime").set(1)
