"""Exported graphs called by tensor: the models of the Open Inference Protocol (KServe v2).

A `GraphSpec` is what a client needs to call one exported graph: its input and output tensors (name,
datatype, shape; -1 = any size, the batch) read from the .onnx file, and a fingerprint of that file
(it holds the weights). `prepare_graph` checks a request's tensors against the spec and makes them the
rows of a batch (semgen.pipelines.forward), so graph calls go through the same batcher and the same
ONNX Runtime session as the pipelines' own work: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from semgen.pipelines.forward import Prepared, Rows

GRAPH_KEY = "graph:"  # the batch key of a graph call: "graph:<name>"

# the Open Inference Protocol's tensor datatypes and their numpy types (little-endian)
NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
_ONNX_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
               "tensor(uint8)": "UINT8", "tensor(double)": "FP64", "tensor(bool)": "BOOL",
               "tensor(float16)": "FP16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # "FP32", "INT64", ...
    shape: tuple[int, ...]  # -1: any size (the first axis: the batch)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY_TYPES[self.datatype])


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fingerprint: str  # sha256 of the .onnx file

    def output_bytes_per_row(self) -> int:
        return sum(int(np.prod(t.shape[1:], dtype=np.int64)) * t.dtype.itemsize for t in self.outputs)

    def to_dict(self) -> dict:
        tensors = lambda specs: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]
        return {"name": self.name, "inputs": tensors(self.inputs), "outputs": tensors(self.outputs),
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict) -> "GraphSpec":
        tensors = lambda specs: tuple(TensorSpec(t["name"], t["datatype"], tuple(int(x) for x in t["shape"]))
                                      for t in specs)
        return cls(d["name"], tensors(d["inputs"]), tensors(d["outputs"]), d["fingerprint"])


def graph_specs(onnx, names) -> dict[str, GraphSpec]:
    """The specs of the graphs `names` that `onnx` (an OnnxModels) has, but those whose outputs have a free size
    other than the batch."""
    specs = {}
    for name in names:
        if not onnx.has(name):
            continue
        session = onnx.session(name)
        spec = GraphSpec(name, tuple(_tensor(t) for t in session.get_inputs()),
                         tuple(_tensor(t) for t in session.get_outputs()), _sha256(onnx.folder / f"{name}.onnx"))
        if any(-1 in t.shape[1:] for t in spec.outputs):
            continue  # outputs of a size known only once it ran: no bound on a call before the work starts
        specs[name] = spec
    return specs


def _tensor(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)  # named dims ("batch") are free
    return TensorSpec(node.name, _ONNX_TYPES.get(node.type, node.type), shape)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_inputs(spec: GraphSpec, tensors: dict[str, np.ndarray], max_rows: int) -> int:
    """The batch size of `tensors`, once each is checked against `spec` (ValueError naming the tensor)."""
    expected = {t.name for t in spec.inputs}
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise ValueError(f"inputs[{unknown[0]}]: {spec.name} has no input of that name; its inputs are "
                         f"{', '.join(t.name for t in spec.inputs)}")
    rows = None
    for t in spec.inputs:
        if t.name not in tensors:
            raise ValueError(f"inputs[{t.name}]: missing; {spec.name} needs {t.datatype} {list(t.shape)}")
        a = tensors[t.name]
        if a.dtype != t.dtype:
            raise ValueError(f"inputs[{t.name}]: datatype must be {t.datatype}")
        if a.ndim != len(t.shape) or any(want not in (-1, got) for want, got in zip(t.shape, a.shape)):
            raise ValueError(f"inputs[{t.name}]: shape {list(a.shape)} does not match {list(t.shape)} "
                             "(-1: any size)")
        if rows is None:
            rows = a.shape[0]
        elif a.shape[0] != rows:
            raise ValueError(f"inputs[{t.name}]: batch of {a.shape[0]} rows, but {spec.inputs[0].name} has {rows}")
    if not rows:
        raise ValueError(f"inputs[{spec.inputs[0].name}]: empty batch; send at least one row")
    if rows > max_rows:
        raise ValueError(f"inputs[{spec.inputs[0].name}]: {rows} rows is over the limit of {max_rows} per request")
    return rows


def prepare_graph(graphs: dict[str, GraphSpec], args: dict) -> Prepared:
    """A graph call's rows: args = {"graph": name, "inputs": {tensor name: array}, "max_rows": n}.
    Its result is the graph's outputs, by name."""
    name = args["graph"]
    if name not in graphs:
        raise KeyError(f"model: no model named {name!r}")
    spec = graphs[name]
    check_inputs(spec, args["inputs"], args.get("max_rows", 1 << 20))
    rows = {t.name: np.ascontiguousarray(args["inputs"][t.name]) for t in spec.inputs}
    return Prepared(GRAPH_KEY + name, rows, lambda out: out)


def run_graph(onnx, key: str, rows: Rows) -> Rows:
    """One batch of graph calls (key "graph:<name>") on ONNX Runtime."""
    return onnx.run(key[len(GRAPH_KEY):], rows)
