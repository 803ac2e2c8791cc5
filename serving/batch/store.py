"""A batch job's output folder, safe to kill at any moment and resume:

    OUT/outputs/<key>[_s<seed>]_<field>_<nn>.png   one file per output, named from the item alone
    OUT/results.jsonl                              one record per item: status, outputs, latency, attempts
    OUT/summary.json                               the counts of the last run
    OUT/.lock                                      held (flock) by the run writing the folder

An output is written to a temporary file, fsynced and renamed, so a file under its final name is whole. An item's
record is appended (and fsynced) after all its outputs are in place, so an item with a record is done; one killed
before its record is run again and rewrites the same names with the same bytes. Opening the folder drops a torn
last line of results.jsonl, the records of items that failed with a status worth retrying (they run again) and
temporary files a killed run left. One run at a time: a second one on the same folder (a job resubmitted to Ray
before the stopped one ended) is refused; the lock goes with the process, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from serving.batch.manifest import Item

# statuses that say the call did not or could not finish on the server: retried within a run, and again by the
# next run when the attempts ran out
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
TMP_SUFFIX = ".tmp"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_LISTED_VALUES = 64  # longer repeated fields of a reply (latents) stay out of results.jsonl


@dataclass
class Result:
    """How one item ended."""

    item: Item
    status: str  # "OK" or a gRPC status name
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (field, bytes) in reply order
    info: dict = field(default_factory=dict)  # the reply's other fields
    error: str = ""
    latency_s: float = 0.0
    attempts: int = 1


def reply_outputs(reply) -> tuple[list[tuple[str, bytes]], dict]:
    """(every bytes field of the reply, in order, as (field name, bytes); its other short fields as JSON)."""
    outputs: list[tuple[str, bytes]] = []

    def walk(message):
        for fd, value in message.ListFields():
            values = value if fd.is_repeated else [value]
            if fd.type == FieldDescriptor.TYPE_BYTES:
                outputs.extend((fd.name, v) for v in values)
            elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
                for v in values:
                    walk(v)

    walk(reply)
    info = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    return outputs, _short(info)


def _short(value):
    """The JSON of a reply without bytes (base64 strings of outputs) and without long lists (latents)."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items() if not _is_long(v)}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _is_long(value) -> bool:
    if isinstance(value, list):
        return len(value) > MAX_LISTED_VALUES or any(isinstance(v, str) and len(v) > 1024 for v in value)
    return isinstance(value, str) and len(value) > 1024


def output_names(item: Item, outputs: list[tuple[str, bytes]]) -> list[str]:
    """The file name of each output: the item's key, its seed, the reply field and the index within the field."""
    seed = "" if item.seed is None else f"_s{item.seed}"
    counts: dict[str, int] = {}
    names = []
    for name, data in outputs:
        index = counts.get(name, 0)
        counts[name] = index + 1
        suffix = ".png" if data.startswith(PNG_SIGNATURE) else ".bin"
        names.append(f"{item.key}{seed}_{name}_{index:02d}{suffix}")
    return names


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobFolder:
    """The output folder of one job; `done` holds the keys of the items already finished."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.outputs = self.root / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        self._held = open(self.root / ".lock", "a")
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._held.close()
            raise ValueError(f"--out {self.root}: another batch job is writing to this folder; run this one when it "
                             "has ended") from None
        self.results = self.root / "results.jsonl"
        for stale in self.outputs.glob("*" + TMP_SUFFIX):
            stale.unlink()
        self.records = self._kept_records()
        self.done = {record["key"] for record in self.records}
        self._lock = threading.Lock()  # executors may write from several threads
        self.first_write_at: float | None = None  # perf_counter of this run's first record
        self._log = open(self.results, "a")

    def _kept_records(self) -> list[dict]:
        """The records of finished items; rewrites results.jsonl without a torn line and retryable failures."""
        if not self.results.exists():
            return []
        kept, dropped = [], False
        for line in self.results.read_text().split("\n"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped |= bool(line.strip())  # a torn last line from a killed run
                continue
            if record.get("status") in RETRYABLE:
                dropped = True
                continue
            kept.append(record)
        if dropped:
            write_atomically(self.results, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept

    def write(self, result: Result) -> dict:
        """Put the item's outputs in place, then its record; returns the record."""
        names = output_names(result.item, result.outputs)
        for name, (_, data) in zip(names, result.outputs):
            write_atomically(self.outputs / name, data)
        if names:
            _fsync_dir(self.outputs)
        record = {"key": result.item.key, "line": result.item.line, "rpc": result.item.rpc, "status": result.status,
                  "outputs": names, "latency_s": round(result.latency_s, 4), "attempts": result.attempts}
        if result.error:
            record["error"] = result.error
        if result.info:
            record["reply"] = result.info
        with self._lock:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
            os.fsync(self._log.fileno())
            self.records.append(record)
            self.done.add(result.item.key)
            self.first_write_at = self.first_write_at or time.perf_counter()
        return record

    def summary(self, items: list[Item], started: float, ran: int, stopped: bool) -> dict:
        """summary.json: the counts over every item of the job (this run and earlier ones); this run's time from
        `started` (perf_counter), and to its first result (start-up: Ray, models)."""
        elapsed_s = time.perf_counter() - started
        first_s = (self.first_write_at or started) - started
        keys = {item.key for item in items}
        records = [r for r in self.records if r["key"] in keys]
        codes: dict[str, int] = {}
        for r in records:
            codes[r["status"]] = codes.get(r["status"], 0) + 1
        outputs = sum(len(r["outputs"]) for r in records)
        summary = {
            "items": len(items), "done": len(records), "ok": codes.get("OK", 0),
            "failed": len(records) - codes.get("OK", 0), "missing": len(items) - len(records), "codes": codes,
            "outputs": outputs, "this_run": {"items": ran, "elapsed_s": round(elapsed_s, 3),
                                             "first_result_s": round(first_s, 3),
                                             "items_per_s": round(ran / elapsed_s, 3) if elapsed_s > 0 else 0.0},
            "stopped_early": stopped,
        }
        write_atomically(self.root / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        return summary

    def close(self) -> None:
        self._log.close()
        self._held.close()  # releases the lock
