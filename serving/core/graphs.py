"""Exported graphs called by tensor, on an embedded engine: what the Open Inference Protocol serves.

`GraphCalls` is mixed into the embedded engines that own a dynamic batcher: a graph call becomes one
more request of that batcher (op "graph"), so it shares graph runs, the queue limit and the metrics
with the domain API's requests, and the same inputs give the same bytes. A backend (TorchServe, Ray Serve)
answers op "graphs" with `graph_table`, and runs op "graph" like its other forward ops (serving/remote.py).
"""

from __future__ import annotations

import numpy as np

from semgen.pipelines.forward import Op
from semgen.pipelines.graphs import GraphSpec
from serving.core.errors import Unsupported


class GraphCalls:
    """Needs `self._pipeline` (with `graphs`: name -> GraphSpec, empty without ONNX Runtime) and `self._batcher`."""

    @property
    def graphs(self) -> dict:
        """name -> semgen.pipelines.graphs.GraphSpec."""
        return getattr(self._pipeline, "graphs", {})

    async def infer(self, graph: str, inputs: dict[str, np.ndarray], max_rows: int) -> dict[str, np.ndarray]:
        """The outputs of `graph` on `inputs` (checked against its spec: InvalidInput naming the tensor)."""
        if self._batcher is None:  # an engine inside a backend: the backend batches (run_batch)
            raise Unsupported("model: graph calls go through the batcher (--runtime onnx)")
        return await self._batcher.call(Op.GRAPH, dict(graph=graph, inputs=inputs, max_rows=max_rows),
                                        label="infer")


def graph_table(engine) -> dict:
    """An engine's graphs as plain data (a backend's answer to op "graphs")."""
    return {name: spec.to_dict() for name, spec in getattr(engine, "graphs", {}).items()}


def graph_specs_of(table: dict) -> dict[str, GraphSpec]:
    return {name: GraphSpec.from_dict(d) for name, d in table.items()}
