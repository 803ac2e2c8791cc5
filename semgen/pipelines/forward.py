"""Forward-only work, split so that requests can share a batch: prepare → run → finish.

`prepare` checks one request and turns it into a `Prepared`: the rows it adds to a batch (arrays
with one row per output image), the key of the graph those rows go through, and a `finish` that
turns the request's own output rows into its result. `run_batch` concatenates the rows of the
requests that share a key, runs each graph once and gives every request its rows back.

The embedded engine's batcher (prepare, then `run_prepared`) and the TorchServe handler
(`run_batch`) run the same pipelines, which is why one request gives the same bytes on either engine.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

Rows = dict[str, np.ndarray]


class Op(enum.StrEnum):
    """The forward operations a pipeline's `prepare` takes. A str enum: Op.SAMPLE == "sample",
    str(Op.SAMPLE) == f"{Op.SAMPLE}" == "sample", so callers that still spell the names as strings
    (and metric labels made from them) keep working."""

    GENERATE = "generate"  # PyramidPipeline
    REPAINT = "repaint"  # PyramidPipeline
    COMPOSITE = "composite"  # PyramidPipeline
    SAMPLE = "sample"  # SemanticsPipeline (Segment runs as a sample with a predictor)
    GRAPH = "graph"  # both: one exported graph called by tensor (semgen.pipelines.graphs)


@dataclass
class Prepared:
    key: str  # the graph the rows go through; requests with the same key can share a batch
    rows: Rows  # every array has one row per output image
    finish: Callable[[Rows], Any]  # this request's output rows -> its result
    nbytes: int = 0  # estimated working memory of running its rows (0: not estimated); the batcher caps a batch by it

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))


class GraphFailed(RuntimeError):
    """A graph run failed (a bug or a broken model, never the client's input)."""


class ForwardOps(Protocol):
    def prepare(self, op: Op | str, args: dict) -> Prepared:
        """Check one request (ValueError / KeyError naming the field) and prepare its rows."""

    def run(self, key: str, rows: Rows) -> Rows:
        """One forward pass of graph `key` over a batch of rows."""


def complete(ops: ForwardOps, prepared: Prepared) -> Any:
    """One request on its own (a batch of one)."""
    return prepared.finish(ops.run(prepared.key, prepared.rows))


def run_batch(ops: ForwardOps, requests: list[tuple[Op | str, dict]]) -> list[Any]:
    """The result of every (op, args), in order; a request that fails gets its exception in its
    place and leaves the others alone. ValueError / KeyError mean bad input (from `prepare`);
    a failed graph run is a GraphFailed."""
    prepared: list[Any] = []
    for op, args in requests:
        try:
            prepared.append(ops.prepare(op, args))
        except Exception as e:  # one request's problem, whatever it is
            prepared.append(e)
    return run_prepared(ops, prepared)



def run_prepared(ops: ForwardOps, prepared: list[Any]) -> list[Any]:
    """`run_batch` after the prepare step: one graph run per key over the rows of its requests;
    entries that are exceptions already (failed prepares) stay as they are."""
    results = list(prepared)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        if isinstance(p, Prepared):
            groups[p.key].append(i)
    for key, members in groups.items():
        parts = [prepared[i] for i in members]
        try:
            outputs = ops.run(key, concat_rows([p.rows for p in parts]))
            for i, p, rows in zip(members, parts, split_rows(outputs, [len(p) for p in parts])):
                results[i] = p.finish(rows)
        except Exception as e:  # a failed graph fails the requests in it, not the batch's others
            if len(members) > 1:  # one request's inputs (an out-of-range label) can fail the run: each alone
                for i in members:
                    results[i] = run_prepared(ops, [prepared[i]])[0]
            else:
                results[members[0]] = GraphFailed(f"{key}: {type(e).__name__}: {e}")
    return results


def concat_rows(parts: list[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def chunks(total: int, size: int) -> list[int]:
    """Sizes of `total` rows cut into batches of at most `size`."""
    return [min(size, total - start) for start in range(0, total, size)]


def split_rows(rows: Rows, sizes: list[int]) -> list[Rows]:
    bounds = np.cumsum([0, *sizes])
    return [{name: a[lo:hi] for name, a in rows.items()} for lo, hi in zip(bounds[:-1], bounds[1:])]
