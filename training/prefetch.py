"""Batches rendered ahead of the training step by worker processes.

On a GPU one training step of the layer-wise generator takes less time than rendering its batch of
scenes on one core, so the scenes for the next steps are rendered in parallel while the step runs.
Batch `step` is `source.batch(step, batch_size)` wherever it is made, so a run gives the same
batches with any number of workers (0: rendered in the loop, as before).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

import torch


def _one_thread() -> None:
    torch.set_num_threads(1)  # each worker renders one batch at a time; no thread oversubscription


def _render(source, step: int, batch_size: int):
    return source.batch(step, batch_size)


def batches(source, start: int, stop: int, batch_size: int, workers: int = 0) -> Iterator[tuple]:
    """(step, images, labels) for step in start..stop-1, in order; `workers` processes render
    up to 2 × workers batches ahead. Spawned, not forked: the parent may hold a CUDA context."""
    if workers < 0:
        raise ValueError(f"data_workers: must be 0 or more, got {workers}")
    if workers == 0:
        for step in range(start, stop):
            yield (step, *source.batch(step, batch_size))
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    try:
        ahead: deque = deque()
        next_step = start
        for step in range(start, stop):
            while next_step < stop and len(ahead) < 2 * workers:
                ahead.append(pool.submit(_render, source, next_step, batch_size))
                next_step += 1
            yield (step, *ahead.popleft().result())
    finally:  # also when the consumer stops early: batches not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
