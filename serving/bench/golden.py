"""Portable golden replies: every RPC's reply as a tree of its fields, compared exactly where the value is exact
and within a stated tolerance where it comes out of float kernels.

The same request and seed give the same bytes on one machine and build. Another CPU (AVX2 instead of AVX-512,
another core count) runs other float kernels whose sums round differently, so images move by a level or two of
255 and float fields in their last digits. A reply is recorded as:
  - status codes, strings, integers, booleans, enums, shapes and non-image bytes: exact;
  - images (PNG fields): the decoded pixels, in an .npz beside the JSON, compared by max and mean difference;
    single-channel PNGs are label maps (segmentations), compared by the fraction of pixels whose label differs;
  - floats (losses, scores, latents, Open Inference Protocol tensors): within |a - b| <= atol + rtol * |b|.
The tolerance depends on the kind of work (FORWARD graphs; ITERATIVE jobs that run an optimiser for a few steps;
IMAGINE, which amplifies float noise) and is the one the README states.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from PIL import Image

PNG = b"\x89PNG\r\n\x1a\n"
FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
INFER_RESPONSE = "inference.ModelInferResponse"
# the Open Inference Protocol's datatypes as numpy's (little-endian on the wire)
DATATYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "i1", "INT16": "<i2", "INT32": "<i4",
             "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "?"}


@dataclass(frozen=True)
class Tolerance:
    max_px: int  # the largest difference of one pixel channel, in levels of 255
    mean_px: float  # the mean difference over an image's pixels and channels
    labels: float  # the fraction of a label map's pixels whose label may differ
    rtol: float  # floats: |a - b| <= atol + rtol * |b|
    atol: float


# Chosen from measurements across kernel sets (`semgen bench golden`, the README's table) with room for CPUs not
# measured, and far below what a real change does (another seed moves an image by 40-67 levels on average).
# Forward graphs and the short optimisations (FitHead, SCS, SIE) moved by at most 1 level and 5e-6 in floats.
# IMAGINE amplifies float noise: Adam at lr 0.2 on the pixels against a critic trained on the fly; after 2 + 2
# iterations a pixel moved by 29 levels (mean 0.1), after 50 + 50 the mean is 13.
FORWARD = Tolerance(max_px=4, mean_px=0.25, labels=0.01, rtol=1e-3, atol=1e-4)
ITERATIVE = Tolerance(max_px=8, mean_px=0.5, labels=0.02, rtol=1e-2, atol=1e-3)
IMAGINE = Tolerance(max_px=96, mean_px=1.0, labels=0.02, rtol=0.1, atol=0.05)
EXACT = Tolerance(max_px=0, mean_px=0.0, labels=0.0, rtol=0.0, atol=0.0)  # one machine and build
# the calls of serving/bench/catalogue.py that run an optimiser (FitHead also decides what sample_fitted shows)
ITERATIVE_CALLS = frozenset({"fit_head", "sample_fitted", "sample_conditional", "edit_semantics"})


def tolerance(call: str) -> Tolerance:
    """The tolerance of a catalogue call, or of one run for a number of iterations (imagine_50, edit_semantics_10)."""
    kind, _, count = call.rpartition("_")
    kind = kind if count.isdigit() else call
    return IMAGINE if kind == "imagine" else ITERATIVE if kind in ITERATIVE_CALLS else FORWARD


class Recorder:
    """Turns replies into JSON trees; their arrays (decoded images, float vectors) go to `arrays` by key."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def message(self, message, key: str) -> dict:
        tree = {}
        for field, value in message.ListFields():
            name, at = field.name, f"{key}.{field.name}"
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                tree[name] = {str(k): self.value(value_field, value[k], f"{at}[{k}]") for k in sorted(value)}
            elif field.is_repeated and field.type in FLOATS:
                tree[name] = self.array(np.asarray(value, np.float32), at)
            elif field.is_repeated:
                tree[name] = [self.value(field, v, f"{at}[{i}]") for i, v in enumerate(value)]
            else:
                tree[name] = self.value(field, value, at)
        if message.DESCRIPTOR.full_name == INFER_RESPONSE and message.raw_output_contents:
            # raw tensors: the bytes of the output of the same index, read as its datatype
            tree["raw_output_contents"] = [
                self.array(np.frombuffer(raw, DATATYPES[out.datatype]), f"{key}.raw_output_contents[{i}]")
                for i, (out, raw) in enumerate(zip(message.outputs, message.raw_output_contents))]
        return tree

    def value(self, field, value, key: str):
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(value, key)
        if field.type == FieldDescriptor.TYPE_BYTES:
            if value.startswith(PNG):
                with Image.open(io.BytesIO(value)) as image:
                    return {"png": self.put(key, np.asarray(image)), "mode": image.mode}
            return {"sha256": hashlib.sha256(value).hexdigest(), "size": len(value)}
        if field.type in FLOATS:
            return {"float": float(value)}
        return value

    def array(self, values: np.ndarray, key: str) -> dict:
        return {"array": self.put(key, values), "dtype": str(values.dtype), "shape": list(values.shape)}

    def put(self, key: str, array: np.ndarray) -> str:
        self.arrays[key] = array
        return key


def record_call(recorder: Recorder, name: str, code: str, replies: list, stream: bool) -> dict:
    """One call's record: its status code and, when OK, its reply (a stream: its events, in order)."""
    if code != "OK":
        return {"code": code}
    trees = [recorder.message(reply, f"{name}#{i}" if stream else name) for i, reply in enumerate(replies)]
    return {"code": code, "events": trees} if stream else {"code": code, "reply": trees[0]}


@dataclass
class Difference:
    """How far one call's reply is from its record: the worst image, label map and float, and what differs
    that must be exact."""
    max_px: int = 0
    mean_px: float = 0.0  # the worst image's mean difference
    labels: float = 0.0
    float_excess: float = 0.0  # max |a - b| / (atol + rtol * |b|): above 1 is out of tolerance
    float_abs: float = 0.0  # max |a - b|, for the report
    exact: list[str] = dataclasses.field(default_factory=list)  # where an exact value differs

    def within(self, tol: Tolerance) -> bool:
        return (not self.exact and self.max_px <= tol.max_px and self.mean_px <= tol.mean_px
                and self.labels <= tol.labels and self.float_excess <= 1.0)

    def summary(self) -> dict:
        return {"max_px": self.max_px, "mean_px": round(self.mean_px, 4), "labels": round(self.labels, 4),
                "float_abs": float(f"{self.float_abs:.3g}"), "float_excess": round(self.float_excess, 3),
                "exact": self.exact[:5]}


def compare_call(want: dict, want_arrays, got: dict, got_arrays, tol: Tolerance) -> Difference:
    diff = Difference()
    _compare(want, want_arrays, got, got_arrays, tol, diff, "")
    return diff


def _compare(want, wa, got, ga, tol: Tolerance, diff: Difference, at: str) -> None:
    if isinstance(want, dict) and isinstance(got, dict):
        if "png" in want and "png" in got:
            return _compare_image(wa[want["png"]], ga[got["png"]], want["mode"], got["mode"], diff, at)
        if "array" in want and "array" in got:
            return _compare_floats(wa[want["array"]], ga[got["array"]], tol, diff, at)
        if "float" in want and "float" in got:
            return _compare_floats(np.float64(want["float"]), np.float64(got["float"]), tol, diff, at)
        if want.keys() != got.keys():
            diff.exact.append(f"{at}: fields {sorted(got)} != {sorted(want)}")
            return
        for k in want:
            _compare(want[k], wa, got[k], ga, tol, diff, f"{at}.{k}")
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            diff.exact.append(f"{at}: {len(got)} items != {len(want)}")
            return
        for i, (w, g) in enumerate(zip(want, got)):
            _compare(w, wa, g, ga, tol, diff, f"{at}[{i}]")
    elif want != got:
        diff.exact.append(f"{at}: {got!r} != {want!r}")


def _compare_image(want: np.ndarray, got: np.ndarray, want_mode: str, got_mode: str, diff: Difference, at: str):
    if want.shape != got.shape or want_mode != got_mode:
        diff.exact.append(f"{at}: image {got_mode} {got.shape} != {want_mode} {want.shape}")
    elif want.ndim == 2 and want_mode in ("L", "P"):  # a label map: one class per pixel
        diff.labels = max(diff.labels, float(np.mean(want != got)))
    else:
        d = np.abs(want.astype(np.int16) - got.astype(np.int16))
        diff.max_px = max(diff.max_px, int(d.max(initial=0)))
        diff.mean_px = max(diff.mean_px, float(d.mean()) if d.size else 0.0)


def _compare_floats(want: np.ndarray, got: np.ndarray, tol: Tolerance, diff: Difference, at: str):
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want.shape != got.shape:
        diff.exact.append(f"{at}: shape {got.shape} != {want.shape}")
        return
    if want.size == 0:
        return
    gap = np.abs(want - got)
    gap = np.where(np.isnan(want) & np.isnan(got), 0.0, np.nan_to_num(gap, nan=np.inf))  # NaN equals only NaN
    bound = tol.atol + tol.rtol * np.abs(want)
    excess = np.where(gap == 0, 0.0, np.divide(gap, bound, out=np.full_like(gap, np.inf), where=bound > 0))
    diff.float_abs = max(diff.float_abs, float(gap.max()))
    diff.float_excess = max(diff.float_excess, float(excess.max()))


def compare(want: dict, want_arrays, got: dict, got_arrays) -> dict[str, dict]:
    """Each recorded call against the one got: {name: {"code", "ok", difference summary...}}."""
    out = {}
    for name, record in want.items():
        mine = got.get(name, {"code": "MISSING"})
        if mine["code"] != record["code"]:
            out[name] = {"code": f"{mine['code']} != {record['code']}", "ok": False}
            continue
        tol = tolerance(name)
        diff = compare_call(record, want_arrays, mine, got_arrays, tol)
        out[name] = {"code": record["code"], "ok": diff.within(tol), **diff.summary()}
    for name in got.keys() - want.keys():
        out[name] = {"code": f"{got[name]['code']} (not recorded)", "ok": False}
    return out


def save_record(folder: Path, engine: str, records: dict, arrays: dict, base: str | None = None) -> None:
    """Writes `engine`'s records to <folder>/rpcs.json and its arrays to <folder>/rpcs.npz, beside the other
    engines'. With `base`, only the calls whose record differs from base's are kept (an engine that gives the
    base engine's replies but one call stores that call alone)."""
    golden, stored = load_record(folder) if (folder / "rpcs.json").exists() else ({}, {})
    if base is not None:
        want, want_arrays = expected(golden, stored, base)
        records = {name: r for name, r in records.items()
                   if name not in want or want[name]["code"] != r["code"]
                   or not compare_call(want[name], want_arrays, r, arrays, EXACT).within(EXACT)}
        arrays = {k: v for k, v in arrays.items() if k.split(".")[0].split("#")[0] in records}
    golden[engine] = {"base": base, "calls": records}
    stored = {k: v for k, v in stored.items() if not k.startswith(engine + ":")}
    stored.update({f"{engine}:{k}": v for k, v in arrays.items()})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rpcs.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(folder / "rpcs.npz", **stored)


def load_record(folder: Path) -> tuple[dict, dict]:
    with np.load(folder / "rpcs.npz") as stored:
        return json.loads((folder / "rpcs.json").read_text()), {k: stored[k] for k in stored.files}


def expected(golden: dict, stored: dict, engine: str) -> tuple[dict, dict]:
    """What `engine` must answer: its base engine's records with its own on top, and their arrays by key."""
    entry = golden[engine]
    calls, arrays = {}, {}
    if entry["base"] is not None:
        calls, arrays = expected(golden, stored, entry["base"])
    prefix = engine + ":"
    calls.update(entry["calls"])
    arrays.update({k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)})
    return calls, arrays

