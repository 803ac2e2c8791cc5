"""The TorchServe handler for every semgen model (pyramid, semantics, semantics_jobs, imagine).

It builds the engine `semgen serve --engine embedded` runs, from the bundle and ONNX graphs
packed in the .mar (see `semgen export mar`); the `handler:` section of model-config.yaml says which
service. Forward-only operations (generate, repaint, composite, sample) arrive batched by
TorchServe (batchSize, maxBatchDelay) and run as one `run_batch` over the engine's pipeline on
ONNX Runtime. Iterative operations (imagine, edit, sample_conditional) run as the engine's own job
and stream every event as an intermediate response. Requests and replies are `serving.core.wire`
messages (serving/core/wire.py), one framed message per event: {"op", "args"} in; {"event": type, "value"} or
{"error": type, "message"} out, with the batch size and compute time for the gateway's metrics.

Nothing here needs TorchServe but `_send_intermediate`, so the class runs on any engine that
calls initialize(context) and handle(data, context).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from semgen.pipelines.forward import Op
from serving.core import wire
from serving.core.errors import DeadlineExceeded, Unavailable
from serving.core.graphs import graph_table
from serving.core.jobs import JobRunner
from serving.core.metrics import ServingMetrics
from serving.torchserve.cancel import cancelled
from serving.torchserve.config import HEADS_ENV

FORWARD_OPS = tuple(Op)
JOB_OPS = ("imagine", "edit", "sample_conditional")
CANCEL_POLL_S = 0.05  # how often a running job's cancel marker is looked for


class SemgenHandler:
    def __init__(self):
        self.engine = None
        self.initialized = False

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        settings = handler_settings(context)
        self.jobs = JobRunner(1, ServingMetrics())  # one job at a time; stopped from here when cancelled
        # the user heads: the folder the other engines' FitHead saves into, when the gateway gave it (HEADS_ENV)
        heads = Path(os.environ.get(HEADS_ENV) or model_dir / "heads")
        self.engine = load_engine(settings["service"], model_dir / "bundle", model_dir / "onnx",
                                  int(settings.get("ort_threads", 2)), heads, self.jobs)
        self.loop = asyncio.new_event_loop()  # the embedded engines are asyncio objects
        self.initialized = True

    def handle(self, data: list[dict], context) -> list[bytes]:
        started = time.perf_counter()
        requests = [_unpack(row) for row in data]
        if hasattr(self.engine, "take_in_saved_heads"):
            self.engine.take_in_saved_heads()  # heads FitHead saved (on another engine) since the last batch
        forward = [i for i, r in enumerate(requests) if isinstance(r, dict) and r.get("op") in FORWARD_OPS]
        results: list = list(requests)  # a body that did not unpack keeps its error
        if forward:  # the forward models' engines run batches; the job models' engines have none
            batch = self.engine.run_batch([(requests[i]["op"], requests[i].get("args", {})) for i in forward])
            for i, result in zip(forward, batch):
                results[i] = result
        for i, request in enumerate(requests):
            if i not in forward and isinstance(request, dict):
                results[i] = self._one(request, context, i)
        compute = time.perf_counter() - started
        # the first reply of a batch carries its size, so the gateway counts every batch once
        return [wire.frame(wire.pack({**wire.reply(r), "batch_size": len(data) if i == 0 else 0, "compute_seconds": compute}))
                for i, r in enumerate(results)]

    def _one(self, request: dict, context, index: int):
        """An info or graphs request, or an iterative job (their models run batches of one)."""
        op, args = request.get("op"), request.get("args", {})
        try:
            if op == "info":
                return self.engine.info
            if op == "graphs":
                return graph_table(self.engine)
            if op not in JOB_OPS:
                raise ValueError(f"op: {op!r} is not served by this model")
            if op == "imagine":
                from serving.imagine.engine import ImagineJob

                args = {**args, "job": ImagineJob.from_fields(args["job"])}
            marker, sent_at = args.pop("cancel_marker", None), args.pop("sent_at", None)
            if cancelled(marker):  # the caller left while the job waited in TorchServe's queue
                Path(marker).unlink(missing_ok=True)
                return Unavailable("cancel: the caller left before the job started")
            if sent_at is not None and args.get("time_remaining") is not None:  # the queue's wait counts too
                args["time_remaining"] -= max(0.0, time.time() - sent_at)
                if args["time_remaining"] <= 0:
                    return DeadlineExceeded("deadline: passed while the job waited in TorchServe's queue")
            return self.loop.run_until_complete(self._stream(op, args, context, index, marker))
        except Exception as e:  # the client gets the error as a message, the worker lives on
            return e

    async def _until_jobs_end(self, seconds: float = 30) -> None:
        """Wait for a stopped job's thread to give the slot back, so that the request TorchServe sends next
        finds the engine free."""
        deadline = time.monotonic() + seconds
        while self.jobs.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _watch(self, marker: str) -> None:
        """Stop the job once its marker appears (also in phases without events, e.g. SCS's candidates)."""
        while not cancelled(marker):
            await asyncio.sleep(CANCEL_POLL_S)
        self.jobs.stop_running()

    async def _stream(self, op: str, args: dict, context, index: int, marker: str | None = None):
        """Every event but the last as an intermediate response; the last is the reply (a job that
        fails sends what it had, then its error). A cancelled job (its marker exists) stops at its next check."""
        last = None
        watcher = asyncio.ensure_future(self._watch(marker)) if marker else None
        try:
            async with contextlib.aclosing(getattr(self.engine, op)(**args)) as events:
                async for event in events:
                    if last is not None:
                        _send_intermediate(context, index, wire.frame(wire.pack(wire.reply(last))))
                    last = event
        except Exception:
            if last is not None:
                _send_intermediate(context, index, wire.frame(wire.pack(wire.reply(last))))
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                if cancelled(marker):
                    Path(marker).unlink(missing_ok=True)
                    await self._until_jobs_end()
        return last


def handler_settings(context) -> dict:
    """Our own settings: the `handler:` section of the archive's model-config.yaml."""
    model_yaml = getattr(context, "model_yaml_config", None) or {}
    return dict(model_yaml.get("handler") or {})


def _unpack(row: dict):
    try:
        return wire.unpack(row.get("body") or row.get("data"))
    except Exception as e:  # one unreadable body fails alone
        return RuntimeError(f"request: not a semgen wire message ({type(e).__name__})")


def load_engine(service: str, bundle: Path, onnx_dir: Path, threads: int, heads_dir: Path,
                jobs: JobRunner | None = None):
    """The embedded engine of `service` on the packed bundle (forward passes on ONNX Runtime); the iterative
    ones run their jobs on `jobs`."""
    from semgen.runtime.onnx import OnnxModels
    from serving.pyramid.engine import EmbeddedEngine
    from serving.imagine.engine import EmbeddedImagineEngine
    from serving.semantics.engine import EmbeddedSemanticsEngine

    onnx = OnnxModels(onnx_dir, threads)
    if service == "pyramid":
        return EmbeddedEngine.from_dir(bundle, device="auto", onnx=onnx)
    if service in ("semantics", "semantics_jobs"):
        return EmbeddedSemanticsEngine.from_dir(bundle, heads_dir, device="auto", max_jobs=1, onnx=onnx, jobs=jobs)
    if service == "imagine":
        return EmbeddedImagineEngine.from_dir(bundle, device="auto", max_jobs=1, jobs=jobs)
    raise ValueError(f"handler.service: unknown service {service!r}")


def _send_intermediate(context, index: int, message: bytes) -> None:
    from ts.handler_utils.utils import send_intermediate_predict_response

    request_id = context.request_ids[index]
    send_intermediate_predict_response([message], {0: request_id}, "Intermediate response", 200, context)
