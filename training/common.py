"""Pieces every training loop shares: options written beside outputs, resumable state, progress."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from semgen.options import write_options as write_options_json


def setup_torch(threads: int | None, seed: int):
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def write_options(run_dir: Path, options) -> None:
    """<run_dir>/training_options.json (and the run dir itself)."""
    write_options_json(options, run_dir, "training_options")


def save_state(run_dir: Path, step: int, **parts) -> None:
    """Everything needed to resume (module/optimizer state dicts: tensors only), atomically."""
    state = {"step": step, **{k: v.state_dict() for k, v in parts.items()}}
    tmp = run_dir / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / "state.pt")


def load_state(run_dir: Path, **parts) -> int:
    """Restore parts from run_dir/state.pt if it exists; returns the step to continue from."""
    path = run_dir / "state.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in parts.items():
        v.load_state_dict(state[k])
    return int(state["step"])


class Progress:
    """A tqdm bar that also appends the latest numbers to run_dir/log.jsonl."""

    def __init__(self, run_dir: Path, total: int, start: int, desc: str):
        self.log = open(run_dir / "log.jsonl", "a")
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, mininterval=5)
        self.t0 = time.time()

    def update(self, step: int, every: int = 10, **numbers):
        self.bar.update(1)
        if step % every == 0:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in numbers.items()}, refresh=False)
            self.log.write(json.dumps({"step": step, "elapsed_s": round(time.time() - self.t0, 1), **numbers}) + "\n")
            self.log.flush()

    def close(self):
        self.bar.close()
        self.log.close()
