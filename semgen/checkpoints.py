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
    from semgen.networks.attributes import AttributePredictor
    from semgen.networks.classifier import Classifier, TorchvisionVGG16
    from semgen.networks.resnet import TorchvisionResNet50
    from semgen.networks.pyramid import PyramidDiscriminator, PyramidGenerator
    from semgen.networks.heads import HEAD_KINDS
    from semgen.networks.segmenter import UNetSegmenter
    from semgen.networks.stylegan import StyleDiscriminator, StyleGenerator
    from semgen.networks.stylegan2 import StyleGAN2Generator

    classes = (Classifier, TorchvisionVGG16, TorchvisionResNet50, PyramidGenerator, PyramidDiscriminator,
               StyleGenerator, StyleDiscriminator, StyleGAN2Generator, UNetSegmenter, AttributePredictor,
               *HEAD_KINDS.values())
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
TORCHVISION_RESNET50 = "torchvision-resnet50:"


def load_classifier(spec: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A classifier from a checkpoint folder, or from a torchvision state dict saved with torch.save:
    'torchvision-vgg16:PATH' (e.g. `torch.save(vgg16().state_dict(), PATH)`) or
    'torchvision-resnet50:PATH' (e.g. `torch.save(resnet50().state_dict(), PATH)`)."""
    spec = str(spec)
    if spec.startswith(TORCHVISION_VGG16):
        return load_torchvision_vgg16(spec[len(TORCHVISION_VGG16):]).to(device)
    if spec.startswith(TORCHVISION_RESNET50):
        return load_torchvision_resnet50(spec[len(TORCHVISION_RESNET50):]).to(device)
    return load_checkpoint(spec, device)


def load_torchvision_vgg16(path: str | Path, image_size: int = 224) -> nn.Module:
    """torchvision's `vgg16` state dict -> TorchvisionVGG16 (224 px, its number of classes)."""
    from semgen.networks.classifier import TorchvisionVGG16

    state = _read_torchvision_state(path, "VGG16", head="classifier.6.weight")
    renamed = {k.replace("features.", "convs.", 1).replace("classifier.", "fcs.", 1): v for k, v in state.items()}
    model = TorchvisionVGG16(image_size=image_size, num_classes=renamed["fcs.6.weight"].shape[0])

    def theirs(key):  # report in torchvision's key names, as the user's file has them
        return key.replace("convs.", "features.", 1).replace("fcs.", "classifier.", 1)

    return load_exactly(model, renamed, f"classifier: {path} does not match torchvision's VGG16 layout", theirs)


def load_torchvision_resnet50(path: str | Path, image_size: int = 224) -> nn.Module:
    """torchvision's `resnet50` state dict -> TorchvisionResNet50 (224 px, its number of classes)."""
    from semgen.networks.resnet import TorchvisionResNet50

    state = _read_torchvision_state(path, "ResNet-50", head="fc.weight")
    model = TorchvisionResNet50(image_size=image_size, num_classes=state["fc.weight"].shape[0])
    return load_exactly(model, state, f"classifier: {path} does not match torchvision's ResNet-50 layout")


def _read_torchvision_state(path: str | Path, name: str, head: str) -> dict[str, torch.Tensor]:
    """The state dict in the torch.save file `path`, which must hold the classifier head `head`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier: no torchvision {name} state dict at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch.save file, or one holding more than tensors
        raise ValueError(f"classifier: cannot read {path} as a torch.save state dict: {e}") from None
    if not isinstance(state, dict) or head not in state:
        raise ValueError(f"classifier: {path} is not a torchvision {name} state dict (no {head})")
    return state


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], layout: str,
                 theirs=lambda key: key) -> nn.Module:
    """Load `state` into `model`, refusing missing or unexpected keys and tensors of the wrong shape, each error
    starting with `layout` ("<file> does not match ..."); `theirs` maps the model's key names back to the file's for
    the messages. Returns it in eval mode."""
    own = model.state_dict()
    wrong = sorted(f"{theirs(k)} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
                   for k, v in state.items() if k in own and v.shape != own[k].shape)
    if wrong:
        raise ValueError(f"{layout}: wrong shape {', '.join(wrong[:3])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{layout} (missing {sorted(map(theirs, missing))[:3]}, "
                         f"unexpected {sorted(map(theirs, unexpected))[:3]})")
    return model.eval()


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
