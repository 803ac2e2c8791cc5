"""The Ray Data executor: a batch job's items as a Ray dataset, mapped by a pool of actors that each load the
bundle's embedded engine once.

Each actor hosts the gateway with the embedded engines in its own process, on a unix socket (`ServerThread`), and
calls its items with the online executor's `Caller`: the same checks, the same statuses and the same bytes as a job
sent to `semgen serve`. The driver reads every request's files and ships the request bytes, and the bundle with its
export through Ray's object store (each node unpacks it once into its cache), so the actors need no access to the
inputs or the models; it writes each result into the job folder as it streams back, so a killed job resumes like an
online one. Without --ray-address a local Ray is started on 127.0.0.1 and stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import threading

import ray

from semgen.bundle import Bundle
from serving.batch.manifest import RPCS, Item
from serving.batch.online import Caller, RetryPolicy, open_aio_channel
from serving.batch.progress import progress_bar
from serving.batch.store import JobFolder, Result
from serving.ray.cluster import start_ray
from serving.ray.package import materialize, pack_bundle

ACTOR_FLAGS = {"CPU": "--concurrency: one CPU per Ray Data actor", "GPU": ""}
ROWS_PER_BATCH = 8  # the actor sends a batch's items at once, so its engine's dynamic batcher can group them


class BatchActor:
    """One Ray Data actor: the bundle served in this process, and a Caller on it."""

    def __init__(self, package: dict, timeout_s: float, max_attempts: int, torch_threads: int):
        import torch

        from serving.options import ServeOptions  # the engines load in the actor, never on the driver
        from serving.server_thread import ServerThread

        # as in serving/ray/replica.py: Ray gives the actor OMP_NUM_THREADS = 1, and eager torch's sums (the
        # iterative RPCs) depend on the thread count; the driver's count gives the bytes of `semgen serve`
        torch.set_num_threads(torch_threads)

        self._socket_dir = tempfile.mkdtemp(prefix="semgen-actor-")
        # the driver's bundle and export, unpacked into this node's cache unless it holds them (serving/ray/package.py)
        folder, _ = materialize(package["key"], lambda: ray.get(package["blob"]))
        opts = ServeOptions(models=str(folder / "models"), onnx_dir=str(folder / "onnx"), port=0, metrics_port=0,
                            log_level="WARNING", heads_dir=os.path.join(self._socket_dir, "heads"))
        self._server = ServerThread(opts, f"unix://{self._socket_dir}/grpc.sock")
        # Ray calls __call__ from a thread of its own: the channel lives on a loop in a thread of ours
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="semgen-batch-calls", daemon=True).start()
        self._caller = self._on_loop(self._open(timeout_s, max_attempts))

    def _on_loop(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self, timeout_s: float, max_attempts: int) -> Caller:
        return Caller(open_aio_channel(self._server.address), timeout_s, RetryPolicy(max_attempts=max_attempts))

    async def _call_all(self, items: list[Item], requests: list) -> list[Result]:
        return await asyncio.gather(*(self._caller(item, request) for item, request in zip(items, requests)))

    def __call__(self, batch: dict) -> dict:
        items = [Item(int(line), str(rpc), str(key), {}) for line, rpc, key in
                 zip(batch["line"], batch["rpc"], batch["key"])]
        requests = [RPCS[item.rpc].request.FromString(bytes(data)) for item, data in zip(items, batch["request"])]
        results = self._on_loop(self._call_all(items, requests))
        return {"key": [r.item.key for r in results], "result": [encode_result(r) for r in results]}


def encode_result(result: Result) -> bytes:
    """A result as one bytes cell: a JSON header line, then the outputs back to back (their sizes are in it)."""
    header = {"status": result.status, "error": result.error, "info": result.info, "latency_s": result.latency_s,
              "attempts": result.attempts, "outputs": [[name, len(data)] for name, data in result.outputs]}
    return json.dumps(header).encode() + b"\n" + b"".join(data for _, data in result.outputs)


def decode_result(item: Item, cell: bytes) -> Result:
    head, _, body = cell.partition(b"\n")
    header = json.loads(head)
    outputs, offset = [], 0
    for name, size in header["outputs"]:
        outputs.append((name, body[offset:offset + size]))
        offset += size
    return Result(item, header["status"], outputs, header["info"], header["error"], header["latency_s"],
                  header["attempts"])


def quiet_ray_data() -> None:
    """Our progress bar instead of Ray Data's bars and per-stage log lines."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def say_if_waiting(actors: int) -> None:
    """Each actor takes a CPU; where the cluster has fewer free (Serve replicas hold some), Ray Data waits for them
    without a word: say so."""
    free = ray.available_resources().get("CPU", 0.0)
    if free < actors:
        print(f"waiting for CPUs: {actors} Ray Data actors need {actors}, the cluster has {free:g} free now (other "
              "work holds the rest; a lower --concurrency needs fewer)", file=sys.stderr, flush=True)


def run_on_ray(todo: list[Item], folder: JobFolder, o) -> tuple[int, bool]:
    """(items finished, whether Ctrl-C stopped the job): `todo` mapped on Ray Data by `o.concurrency` actors."""
    if not todo:
        return 0, False
    import torch  # for its thread count only; the models load in the actors

    export = Bundle(o.models).exported_onnx(o.onnx_dir)  # ExportMissing names the command, before Ray starts
    key, blob = pack_bundle(o.models, export)
    started_here = start_ray(o.ray_address, cpus=o.concurrency, flags=ACTOR_FLAGS)
    say_if_waiting(o.concurrency)
    package = {"key": key, "blob": ray.put(blob)}  # the actors' nodes need not share the driver's disk
    quiet_ray_data()
    by_key = {item.key: item for item in todo}
    bar = progress_bar(len(todo), o.progress)
    ran, stopped = 0, False
    try:
        rows = [{"line": item.line, "rpc": item.rpc, "key": item.key, "request": item.request().SerializeToString()}
                for item in todo]
        dataset = ray.data.from_items(rows).map_batches(
            BatchActor, fn_constructor_kwargs=dict(package=package, timeout_s=o.timeout, max_attempts=o.max_attempts,
                                                   torch_threads=torch.get_num_threads()),
            concurrency=o.concurrency, batch_size=ROWS_PER_BATCH, num_cpus=1)
        for row in dataset.iter_rows():
            bar.done(folder.write(decode_result(by_key[row["key"]], row["result"])))
            ran += 1
    except KeyboardInterrupt:
        print("\nstopped: the results so far are saved; run the same command to finish", file=sys.stderr)
        stopped = True
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    return ran, stopped
