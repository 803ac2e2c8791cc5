"""Exported graphs (see `semgen export onnx`) on ONNX Runtime.

A folder of .onnx files becomes named sessions with full graph optimisation and a fixed thread
count; the CUDA provider is used when onnxruntime has it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def ort_session(path: str | Path, threads: int = 2, device: str = "auto"):
    """An ONNX Runtime session with full graph optimisation; the CUDA provider when it is there and
    `device` is not "cpu"."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # no busy-waiting between runs: spinning threads starve the torch/numpy steps around each run
    # (measured: a 64 px torch.round took 7 ms next to spinning ORT threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = ("CPUExecutionProvider",) if device == "cpu" else ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxModels:
    """The .onnx files of one folder, each loaded on first use."""

    def __init__(self, folder: str | Path, threads: int = 2, device: str = "auto"):
        self.folder = Path(folder)
        self.threads, self.device = threads, device
        self._sessions: dict = {}
        self._lock = threading.Lock()

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.onnx").exists()

    def session(self, name: str):
        with self._lock:
            if name not in self._sessions:
                path = self.folder / f"{name}.onnx"
                if not path.exists():
                    raise FileNotFoundError(f"{path}: not exported; run `semgen export onnx`")
                self._sessions[name] = ort_session(path, self.threads, self.device)
            return self._sessions[name]

    def run(self, name: str, feeds: dict[str, np.ndarray], batched: bool = True) -> dict[str, np.ndarray]:
        """Outputs by name. In a graph that batches rows of several requests (`batched`), a one-row
        batch runs as two rows: with more than one thread ONNX Runtime splits a one-row batch's
        work differently (~1e-6 apart), and a request must give the same bytes alone as inside any
        batch. A graph that only ever sees one request's rows needs no padding."""
        session = self.session(name)
        rows = len(next(iter(feeds.values())))
        if rows == 1 and batched:
            feeds = {k: np.concatenate([v, v]) for k, v in feeds.items()}
        outputs = session.run(None, feeds)
        return {o.name: out[:rows] for o, out in zip(session.get_outputs(), outputs)}
