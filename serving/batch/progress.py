"""The progress bar of a batch job (both executors): items done, rate, ETA, and how many failed."""

from __future__ import annotations

import sys


def progress_bar(total: int, enabled: bool = True):
    """A tqdm bar over `total` items on stderr, with `.done(record)` to advance it by one finished item."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="req", desc="batch", disable=not enabled, file=sys.stderr)
    failed = 0

    def done(record: dict) -> None:
        nonlocal failed
        failed += record["status"] != "OK"
        bar.update(1)
        if failed:
            bar.set_postfix(failed=failed)

    bar.done = done
    return bar
