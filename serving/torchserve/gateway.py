"""`semgen serve --engine torchserve`: the gateway's engines forward to a real TorchServe.

Either we start one (on the .mar archives `semgen export mar --store` built into
<torchserve-dir>/store/<key>/, and a supervisor thread restarts TorchServe on the same loopback ports if it dies), or
we connect to one already running at --torchserve-address that serves the models `semgen export
mar` builds. HiganService is not a TorchServe model: it stays embedded in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from semgen.bundle import Bundle, ExportMissing, torchserve_settings
from serving.core.metrics import ServingMetrics
from serving.engines import embedded_higan
from serving.remote import connect_engines
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import KeyFile
from serving.torchserve.process import TorchServeProcess, TorchServeSettings

HANDLER = Path(__file__).with_name("handler.py")  # the handler `semgen export mar --handler` packs

log = logging.getLogger("serving.torchserve")


class Supervisor:
    """Starts TorchServe and starts it again (same ports) whenever it exits, until `stop`."""

    def __init__(self, process, poll_seconds: float = 1.0):
        self.process = process
        self._poll = poll_seconds
        self._stopping = threading.Event()
        self._restarting = False
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
            self._restarting = True
            try:
                self.process.stop()  # sweeps up what is left of the old process group
                self.process.start(timeout=180)
                self._restarting = False
                log.warning("TorchServe is back at %s", self.process.base_url)
            except Exception as e:  # keep trying: the gateway stays up and answers UNAVAILABLE
                log.error("TorchServe restart failed: %s", e)

    def up(self) -> bool:
        """TorchServe runs and is not being restarted (start() returns once its models are ready)."""
        return not self._restarting and self.process.alive()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.process.stop()


def load_torchserve(opts, metrics: ServingMetrics):
    """Engines for `opts` (a ServeOptions) that forward to TorchServe; blocking (runs in a thread)."""
    supervisor = None
    if opts.torchserve_address:
        url = opts.torchserve_address.rstrip("/")
        keys = KeyFile(opts.torchserve_key_file) if opts.torchserve_key_file else None
    else:
        root = Path(opts.torchserve_dir)
        store = model_store(opts)
        # a request's body: its decoded images and masks plus the rest of the message
        body = opts.max_request_decoded_bytes + opts.max_message_bytes
        process = TorchServeProcess(TorchServeSettings(model_store=store, job_queue_size=opts.max_queue,
                                                       default_response_timeout=600, max_body_bytes=body), root / "run",
                                     heads_dir=Path(opts.heads_dir))
        supervisor = Supervisor(process).start()
        url, keys = process.base_url, process.keys
        log.info("TorchServe started at %s (logs in %s)", url, process.log_dir)
    client = TorchServeClient(url, metrics, max_in_flight=opts.max_queue,
                              on_close=supervisor.stop if supervisor else None, keys=keys)
    client.max_job_seconds = opts.max_job_seconds  # sent with every job: the worker's job stops there
    client.cancel_dir = Path(opts.torchserve_dir) / "cancel" if supervisor else None  # a TorchServe of ours
    try:
        engines = asyncio.run(connect_engines(client, opts.models))
        engines.higan = embedded_higan(opts, metrics)
        engines.backend_up = supervisor.up if supervisor else None  # a TorchServe of the operator's: theirs to watch
        if not engines.loaded():
            raise FileNotFoundError(f"{opts.models} has no model TorchServe can serve")
    except BaseException:
        asyncio.run(client.close())  # stops the TorchServe we started
        raise
    return engines


def model_store(opts) -> Path:
    """The store `semgen export mar --store <torchserve-dir>/store` built for this bundle, handler and settings;
    ExportMissing naming that command when it is not there."""
    settings = torchserve_settings(opts.max_batch, opts.max_batch_delay_ms, opts.ort_threads)
    store = Bundle(opts.models).mar_store_dir(Path(opts.torchserve_dir) / "store", HANDLER, settings)
    if not (store / "mars.json").exists():
        raise ExportMissing(
            f"no TorchServe archives of {opts.models} for these settings in {store.parent}; run `semgen export mar "
            f"--models {opts.models} --store {store.parent} --handler {HANDLER} --onnx-cache {opts.onnx_dir} "
            f"--batch-size {opts.max_batch} --max-batch-delay-ms {opts.max_batch_delay_ms} "
            f"--ort-threads {opts.ort_threads}` first")
    return store
