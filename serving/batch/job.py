"""`semgen batch`: a job over many requests, online (a running server) or on Ray Data; resumable and kill-safe.

    semgen batch --manifest jobs.jsonl --out runs/job1 --address 127.0.0.1:50051 --concurrency 8
    semgen batch --images refs/ --op generate --level conv5 --num-samples 4 --out runs/job2
    semgen batch --manifest jobs.jsonl --out runs/job1 --ray --models artifacts     # local Ray, Ray Data
    semgen batch --manifest jobs.jsonl --check                                       # validate only

Run the same command again to finish a job that was stopped or killed: only the missing items run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass

from semgen.options import opt, write_options
from serving.batch.manifest import FOLDER_OPS, Item, ManifestError, folder_items, read_manifest
from serving.batch.online import Caller, RetryPolicy, open_aio_channel, run_items
from serving.batch.progress import progress_bar
from serving.batch.store import JobFolder
from serving.core.channel import Connection


def _template_field(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare string: --set level=conv4


@dataclass(frozen=True, kw_only=True)
class BatchOptions(Connection):
    manifest: str | None = opt(None, "JSONL, one request per line: {\"rpc\": \"Generate\", \"id\": …, fields as the "
                                     "proto's JSON, image fields as file paths}", group="input", required=True)
    images: str | None = opt(None, "a folder of images, each run through --op with the template flags",
                             group="input", required=True)
    op: str = opt("generate", "with --images: the operation", choices=tuple(FOLDER_OPS))
    level: str | None = opt(None, "with --images: the template's level")
    num_samples: int | None = opt(None, "with --images: the template's num_samples")
    seed: int | None = opt(None, "with --images: the template's seed")
    set: tuple[str, ...] = opt((), "with --images: another template field (JSON value); repeat", append=True,
                               metavar="NAME=JSON")
    out: str | None = opt(None, "the job's folder: outputs/, results.jsonl, summary.json (required unless --check)")
    check: bool = opt(False, "only check the input: print the bad lines (exit 2) or the count of requests")
    concurrency: int = opt(4, "requests in flight (online) or Ray Data actors, each with its own models (--ray)")
    timeout: float = opt(300.0, "seconds each attempt may take before DEADLINE_EXCEEDED")
    max_attempts: int = opt(5, "attempts per request for UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED")
    ray: bool = opt(False, "run on Ray Data instead of a server: the embedded engine loaded once per actor")
    ray_address: str | None = opt(None, "with --ray: a cluster to join (auto, ray://host:10001); none: a local Ray "
                                        "on 127.0.0.1, stopped at the end")
    models: str = opt("artifacts", "with --ray: the model bundle each actor serves")
    onnx_dir: str = opt("var/onnx", "with --ray: the bundle's ONNX export (semgen export onnx)")
    progress: bool = opt(True, "a progress bar with rate and ETA on stderr")

    def template(self) -> dict:
        fields = dict(_template_field(text) for text in self.set)
        for name in ("level", "num_samples", "seed"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields

    def check_flags(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1 or self.timeout <= 0:
            raise ValueError("--concurrency and --max-attempts must be at least 1, --timeout above 0")
        if not self.check and not self.out:
            raise ValueError("--out: required (the job's folder)")
        if self.manifest and (self.set or self.level or self.num_samples is not None or self.seed is not None):
            raise ValueError("--level, --num-samples, --seed and --set make the template of --images; a manifest "
                             "line carries its own fields")
        if self.ray_address and not self.ray:
            raise ValueError("--ray-address goes with --ray")


def read_items(o: BatchOptions) -> list[Item]:
    return read_manifest(o.manifest) if o.manifest else folder_items(o.images, o.op, o.template())


def run_batch(o: BatchOptions) -> int:
    try:
        o.check_flags()
        items = read_items(o)
    except (ValueError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if o.check:
        print(f"{len(items)} requests OK")
        return 0
    try:
        folder = JobFolder(o.out)
    except ValueError as e:  # another run holds the folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_options(o, o.out, "batch_options")
    todo = [item for item in items if item.key not in folder.done]
    print(f"{len(items)} requests, {len(items) - len(todo)} done before, {len(todo)} to run", file=sys.stderr,
          flush=True)
    started = time.perf_counter()
    try:
        if o.ray:
            from serving.batch.ray_data import run_on_ray  # imports ray and the engines: only when asked

            ran, stopped = run_on_ray(todo, folder, o)
        else:
            ran, stopped = asyncio.run(_run_online(todo, folder, o))
    except (OSError, ValueError) as e:  # no export of the bundle (it names the command), a cluster too small
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C: what was recorded stays; the same command resumes
        print("abandoned the requests in flight; run the same command to finish the job", file=sys.stderr)
        return 130
    finally:
        folder.close()
    summary = folder.summary(items, started, ran, stopped)
    print(json.dumps(summary))
    return 130 if stopped else (0 if summary["failed"] == summary["missing"] == 0 else 1)


async def _run_online(todo: list[Item], folder: JobFolder, o: BatchOptions) -> tuple[int, bool]:
    """(items finished, whether Ctrl-C stopped the job). The first Ctrl-C lets the items in flight finish."""
    kwargs = o.channel_kwargs()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted():
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping: finishing the requests in flight (Ctrl-C again to abandon them)", file=sys.stderr)
        stop.set()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    bar = progress_bar(len(todo), o.progress)
    try:
        async with open_aio_channel(o.address, kwargs["credentials"], kwargs["server_name"]) as channel:
            caller = Caller(channel, o.timeout, RetryPolicy(max_attempts=o.max_attempts), kwargs["token"])
            ran = await run_items(todo, caller, folder.write, o.concurrency, stop, bar.done)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        bar.close()
    return ran, stop.is_set()
