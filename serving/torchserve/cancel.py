"""Cancelling a job that runs in a TorchServe worker: TorchServe cannot stop a handler, so the gateway
drops a marker file. The handler skips a job whose marker exists when TorchServe hands it over, and
polls for it while the job runs, which then stops at its next check (every iteration; every batch of
SCS candidates). Works for a TorchServe the gateway started on this machine (they share the folder)."""

from __future__ import annotations

import uuid
from pathlib import Path


def new_marker(folder: Path) -> Path:
    """A fresh marker path for one job (not created: created means cancelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / uuid.uuid4().hex


def cancelled(marker: str | None) -> bool:
    return marker is not None and Path(marker).exists()
