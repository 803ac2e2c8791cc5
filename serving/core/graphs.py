"""Exported graphs called by tensor, on an embedded engine: what the Open Inference Protocol serves.

`GraphCalls` is mixed into the embedded engines that own a dynamic batcher: a graph call becomes one
more request of that batcher (op "graph"), so it shares graph runs, the queue limit and the metrics
with the domain API's requests, and the same inputs give the same bytes.
"""

from __future__ import annotations

import numpy as np

from semgen.pipelines.forward import Op


class GraphCalls:
    """Needs `self._pipeline` (with `graphs`: name -> GraphSpec) and `self._batcher` (None: none to call)."""

    @property
    def graphs(self) -> dict:
        """name -> semgen.pipelines.graphs.GraphSpec; empty without a batcher (--runtime torch)."""
        return getattr(self._pipeline, "graphs", {}) if self._batcher is not None else {}

    async def infer(self, graph: str, inputs: dict[str, np.ndarray], max_rows: int) -> dict[str, np.ndarray]:
        """The outputs of `graph` on `inputs` (checked against its spec: InvalidInput naming the tensor)."""
        return await self._batcher.call(Op.GRAPH, dict(graph=graph, inputs=inputs, max_rows=max_rows),
                                        label="infer")
