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
    from semgen.networks.classifier import Classifier, TorchvisionVGG16
    from semgen.networks.pyramid import PyramidDiscriminator, PyramidGenerator
    from semgen.networks.heads import HEAD_KINDS
    from semgen.networks.segmenter import UNetSegmenter
    from semgen.networks.stylegan import StyleDiscriminator, StyleGenerator

    classes = (Classifier, TorchvisionVGG16, PyramidGenerator, PyramidDiscriminator, StyleGenerator,
               StyleDiscriminator, UNetSegmenter, *HEAD_KINDS.values())
    return {c.__name__: c for c in classes}


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


TORCHVISION_VGG16 = "torchvision-vgg16:"


def load_classifier(spec: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A classifier from a checkpoint folder, or from 'torchvision-vgg16:PATH' (a torchvision
    VGG16 state dict saved with torch.save, e.g. `torch.save(vgg16().state_dict(), PATH)`)."""
    spec = str(spec)
    if spec.startswith(TORCHVISION_VGG16):
        return load_torchvision_vgg16(spec[len(TORCHVISION_VGG16):]).to(device)
    return load_checkpoint(spec, device)


def load_torchvision_vgg16(path: str | Path, image_size: int = 224) -> nn.Module:
    """torchvision's `vgg16` state dict -> TorchvisionVGG16 (224 px, its number of classes)."""
    from semgen.networks.classifier import TorchvisionVGG16

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier: no torchvision VGG16 state dict at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    renamed = {k.replace("features.", "convs.", 1).replace("classifier.", "fcs.", 1): v for k, v in state.items()}
    if "fcs.6.weight" not in renamed:
        raise ValueError(f"classifier: {path} is not a torchvision VGG16 state dict (no classifier.6.weight)")
    model = TorchvisionVGG16(image_size=image_size, num_classes=renamed["fcs.6.weight"].shape[0])
    try:
        missing, unexpected = model.load_state_dict(renamed, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ValueError(f"classifier: {path} does not match torchvision's VGG16 layout: "
                         f"{str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        def theirs(keys):  # report in torchvision's key names, as the user's file has them
            return sorted(k.replace("convs.", "features.", 1).replace("fcs.", "classifier.", 1) for k in keys)[:3]

        raise ValueError(f"classifier: {path} does not match torchvision's VGG16 layout "
                         f"(missing {theirs(missing)}, unexpected {theirs(unexpected)})")
    return model.eval()


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
