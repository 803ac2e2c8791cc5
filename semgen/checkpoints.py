"""Checkpoints: safetensors weights + the constructor config as JSON (no pickled code).

A checkpoint is a folder:
    model.safetensors   the module's state dict (for generators: the EMA generator)
    config.json         {"class": name, "config": {constructor kwargs}, "step": int, "training": {...}}
Loading rebuilds the module from the config, then loads the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _registry() -> dict[str, type[nn.Module]]:
    # Imported here so that this module stays importable without pulling every network in.
    from semgen.networks.classifier import Classifier
    from semgen.networks.pyramid import PyramidDiscriminator, PyramidGenerator

    return {c.__name__: c for c in (Classifier, PyramidGenerator, PyramidDiscriminator)}


def save_checkpoint(path: str | Path, module: nn.Module, config: dict, step: int = 0, training: dict | None = None):
    """Write module weights and its constructor config into the folder `path` (atomically per file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(path / "model.safetensors")
    meta = {"class": type(module).__name__, "config": _jsonable(config), "step": step, "training": training or {}}
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path / "config.json")


def read_config(path: str | Path) -> dict:
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: config.json missing")
    return json.loads(cfg.read_text())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the module from config.json and load model.safetensors; returns it in eval mode."""
    path = Path(path)
    meta = read_config(path)
    registry = _registry()
    if meta["class"] not in registry:
        raise ValueError(f"{path}: unknown network class {meta['class']!r}")
    module = registry[meta["class"]](**meta["config"])
    module.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    return module.to(device).eval()


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
