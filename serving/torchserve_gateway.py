"""`semgen serve --engine torchserve`: the gateway's engines forward to a real TorchServe.

Either we start one (the bundle's .mar archives are built into var/torchserve/store/<key>/ when
missing, and a supervisor thread restarts TorchServe on the same loopback ports if it dies), or
we connect to one already running at --torchserve-address that serves the models `semgen export
mar` builds. HiganService is not a TorchServe model: it stays embedded in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from serving.metrics import ServingMetrics
from serving.torchserve_engine import (TorchServeClient, TorchServeImagineEngine, TorchServePyramidEngine,
                                       TorchServeSemanticsEngine)

log = logging.getLogger("serving.torchserve")


class Supervisor:
    """Starts TorchServe and starts it again (same ports) whenever it exits, until `stop`."""

    def __init__(self, process, poll_seconds: float = 1.0):
        self.process = process
        self._poll = poll_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="semgen-torchserve-supervisor", daemon=True)

    def start(self, timeout: float = 180) -> "Supervisor":
        self.process.start(timeout=timeout)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll):
            if self.process.alive():
                continue
            log.warning("TorchServe exited; starting it again (calls get UNAVAILABLE meanwhile)")
            try:
                self.process.stop()  # sweeps up what is left of the old process group
                self.process.start(timeout=180)
                log.warning("TorchServe is back at %s", self.process.base_url)
            except Exception as e:  # keep trying: the gateway stays up and answers UNAVAILABLE
                log.error("TorchServe restart failed: %s", e)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.process.stop()


def load_torchserve(opts, metrics: ServingMetrics):
    """Engines for `opts` (a ServeOptions) that forward to TorchServe; blocking (runs in a thread)."""
    from serving.server import Engines

    if opts.classifier or opts.imagine_classifier:
        raise ValueError("--classifier and --imagine-classifier work with --engine embedded only "
                         "(the .mar archives carry the bundle's own classifier)")
    supervisor = None
    if opts.torchserve_address:
        url = opts.torchserve_address.rstrip("/")
    else:
        from export.mar import ensure_mars
        from serving.torchserve import TorchServeProcess, TorchServeSettings

        root = Path(opts.torchserve_dir)
        store = ensure_mars(opts.models, root / "store", opts.onnx_dir, batch_size=opts.max_batch,
                            max_batch_delay_ms=opts.max_batch_delay_ms, ort_threads=opts.ort_threads)
        process = TorchServeProcess(TorchServeSettings(model_store=store, job_queue_size=opts.max_queue,
                                                       default_response_timeout=600), root / "run")
        supervisor = Supervisor(process).start()
        url = process.base_url
        log.info("TorchServe started at %s (logs in %s)", url, process.log_dir)
    client = TorchServeClient(url, metrics, max_in_flight=opts.max_queue,
                              on_close=supervisor.stop if supervisor else None)
    try:
        engines = asyncio.run(_connect(client, Path(opts.models)))
        engines.higan = _embedded_higan(opts, metrics)
        if not engines.loaded():
            raise FileNotFoundError(f"{opts.models} has no model TorchServe can serve")
    except BaseException:
        asyncio.run(client.close())  # stops the TorchServe we started
        raise
    return engines


async def _connect(client: TorchServeClient, models: Path):
    from serving.server import Engines

    engines = Engines()
    if (models / "pyramid").exists():
        engines.pyramid = await TorchServePyramidEngine.connect(client)
    if (models / "stylegan").exists():
        engines.semantics = await TorchServeSemanticsEngine.connect(client)
    if (models / "classifier").exists():
        engines.imagine = await TorchServeImagineEngine.connect(client)
    return engines


def _embedded_higan(opts, metrics):
    from serving.higan_engine import BUNDLE_FOLDERS, EmbeddedHiganEngine

    if all((Path(opts.models) / folder).exists() for folder in BUNDLE_FOLDERS):
        return EmbeddedHiganEngine.from_dir(opts.models, device=opts.device, workers=opts.workers, metrics=metrics)
    return None
