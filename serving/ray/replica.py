"""A Ray Serve replica of semgen's models: the embedded engines of `semgen serve`, loaded once per replica.

One class, deployed twice by serving/ray/gateway.py: "semgen-forward" answers `call` (Generate, Repaint, Composite,
Sample, Segment, batched by Ray Serve's own `@serve.batch` into one `run_batch` per model, and `info`);
"semgen-jobs" answers `stream` (SampleConditional, EditSemantics, Imagine: every event as it comes; FitHead: its
result). The replicas share the heads folder: one fits and saves a head, the others take it in on their next call.
Requests and replies are `serving.core.wire` messages, as with the TorchServe handler, so the gateway's remote
engines (serving/remote.py) read both backends alike. An engine error travels as a reply; a cancelled stream stops
its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from pathlib import Path

from ray import serve

from semgen.pipelines.forward import Op
from serving.core import wire
from serving.core.errors import DeadlineExceeded, InvalidInput
from serving.core.graphs import graph_table
from serving.ray.heads import HeadsFollower, own_heads_folder
from serving.ray.package import DEFAULT_CACHE, materialize

FORWARD_OPS = tuple(Op)
SLOT_WAIT_S = 30.0  # the longest a job waits on its replica for a cancelled job's slot
JOB_OPS = {"sample_conditional": "semantics_jobs", "edit": "semantics_jobs", "fit_head": "semantics_jobs",
           "imagine": "imagine"}


class Replica:
    def __init__(self, options: dict, torch_threads: int, package: dict | None = None):
        import ray
        import torch

        from serving.core.metrics import ServingMetrics
        from serving.engines import load_embedded
        from serving.options import ServeOptions

        # Ray gives an actor OMP_NUM_THREADS = its CPUs; eager torch's sums depend on the thread count, so the jobs
        # run with the gateway's count to give the embedded engine's bytes
        torch.set_num_threads(torch_threads)
        self.heads = None
        if package is not None:  # the gateway's bundle, from this node's cache or fetched into it
            cache = Path(options["ray_bundle_cache"] or DEFAULT_CACHE)
            folder, fetched = materialize(package["key"], lambda: ray.get(package["blob"]), cache)
            # user heads: a folder of this replica's own, kept in step with the cluster's mirror
            self.heads = HeadsFollower(own_heads_folder(cache))
            self.heads.sync_now()
            options = {**options, "models": str(folder / "models"), "onnx_dir": str(folder / "onnx"),
                       "heads_dir": str(self.heads.folder)}
            self.bundle = {"key": package["key"], "folder": str(folder), "fetched": fetched}
        opts = ServeOptions(**options)
        self.max_jobs = opts.max_jobs
        self.engines = load_embedded(opts, ServingMetrics())
        self._forward.set_max_batch_size(opts.max_batch)
        self._forward.set_batch_wait_timeout_s(opts.max_batch_delay_ms / 1000)

    async def _sync_heads(self, model: str) -> None:
        if self.heads is not None and model.startswith("semantics"):
            await self.heads.sync()

    def _engine(self, model: str):
        engine = {"pyramid": self.engines.pyramid, "semantics": self.engines.semantics,
                  "semantics_jobs": self.engines.semantics, "imagine": self.engines.imagine}.get(model)
        if engine is None:
            raise InvalidInput(f"model: {model!r} is not served by this replica")
        if engine is self.engines.semantics:
            engine.take_in_saved_heads()  # heads another replica fitted since
        return engine

    async def call(self, model: str, message: bytes) -> bytes:
        """A forward op (batched with the replica's other calls), `info` or `graphs`: one wire reply."""
        request = wire.unpack(message)
        op, args = request.get("op"), request.get("args", {})
        size, compute = 0, 0.0
        try:
            await self._sync_heads(model)
            if op == "info":
                result = self._engine(model).info
            elif op == "graphs":
                result = graph_table(self._engine(model))
            elif op in FORWARD_OPS:
                result, size, compute = await self._forward((self._engine(model), op, args))
            else:
                raise InvalidInput(f"op: {op!r} is not a forward op")
        except Exception as e:  # the error goes back as a reply: the replica lives on
            result = e
        return wire.pack({**wire.reply(result), "batch_size": size, "compute_seconds": compute})

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # set from the options in __init__
    async def _forward(self, calls: list[tuple]) -> list[tuple]:
        """One `run_batch` per engine over the calls Ray Serve gathered: (result, batch size on the first, compute)."""
        started = time.perf_counter()
        results: list = [None] * len(calls)
        for engine in {id(engine): engine for engine, _, _ in calls}.values():
            rows = [i for i, (e, _, _) in enumerate(calls) if e is engine]
            batch = await asyncio.to_thread(engine.run_batch, [(calls[i][1], calls[i][2]) for i in rows])
            for i, result in zip(rows, batch):
                results[i] = result
        compute = time.perf_counter() - started
        return [(result, len(calls) if i == 0 else 0, compute) for i, result in enumerate(results)]

    async def stream(self, model: str, message: bytes):
        """Every event of an iterative job as a wire reply; an error ends the stream as its last reply."""
        request = wire.unpack(message)
        op, args = request.get("op"), dict(request.get("args", {}))
        try:
            if JOB_OPS.get(op) != model:
                raise InvalidInput(f"op: {op!r} is not a job of model {model!r}")
            if op == "imagine":
                from serving.imagine.engine import ImagineJob

                args["job"] = ImagineJob.from_fields(args["job"])
            sent_at = args.pop("sent_at", None)
            if sent_at is not None and args.get("time_remaining") is not None:  # the wait in Ray's queue counts
                args["time_remaining"] -= max(0.0, time.time() - sent_at)
                if args["time_remaining"] <= 0:
                    raise DeadlineExceeded("deadline: passed while the job waited for a Ray Serve replica")
            await self._sync_heads(model)
            engine = self._engine(model)
            await self._until_a_slot_is_free(engine, args.get("time_remaining"))
            job = getattr(engine, op)(**args)
            if inspect.iscoroutine(job):  # FitHead: one result, no progress
                result = await job
                if self.heads is not None:  # every replica, and the gateway's record, take it from the mirror
                    await self.heads.publish(args["name"])
                yield wire.pack(wire.reply(result))
                return
            async with contextlib.aclosing(job) as events:
                async for event in events:
                    yield wire.pack(wire.reply(event))
        except Exception as e:
            yield wire.pack(wire.reply(e))

    async def _until_a_slot_is_free(self, engine, time_remaining: float | None) -> None:
        """Ray Serve sends the next job as soon as the caller of a running one leaves, while that job stops at its
        next check: wait for its slot (a few seconds at most; the engine refuses the job if it is still taken)."""
        deadline = time.monotonic() + min(SLOT_WAIT_S, time_remaining or SLOT_WAIT_S)
        while engine.running_jobs >= self.max_jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for engine in self.engines.loaded():
            await engine.close()

    async def __del__(self):
        await self.close()
