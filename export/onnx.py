"""`semgen export onnx`: the forward-only models as ONNX graphs with a dynamic batch axis, each
checked with `onnx.checker` and against eager PyTorch (max abs difference).

    classifier.onnx   image [B, 3, S, S] in [-1, 1] -> one output per level (conv1 … fc8)
    mapping.onnx      z [B, z_dim] -> w [B, w_dim] (no truncation)
    synthesis.onnx    ws [B, num_ws, w_dim] -> image [B, 3, S, S] in [-1, 1] (const noise): the generator alone
    synthesis_<head>.onnx
                      ws [B, num_ws, w_dim] -> image [B, 3, S, S], logits [B, classes, S, S]
                      (the layer-wise generator fused with a semantic head)
    pyramid.onnx      z, labels, then <level>_features and <level>_mask for every level -> image
                      (an all-zero mask leaves a level out, as in the eager generator)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semgen.bundle import ONNX_EXPORT_VERSION, ONNX_HEAD, Bundle
from semgen.checkpoints import load_checkpoint
from semgen.runtime.onnx import ort_session

OPSET = 17
PARITY_TOLERANCE = 1e-4


class _ClassifierLevels(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, image):
        return tuple(self.classifier.features(image).values())


class _Mapping(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, z):
        return self.generator.mapping_w(z)


class _Synthesis(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, ws):
        return self.generator.synthesis(ws, noise_mode="const")


class _SynthesisWithHead(nn.Module):
    def __init__(self, generator, head):
        super().__init__()
        self.generator, self.head = generator, head

    def forward(self, ws):
        image, features = self.generator.synthesis(ws, noise_mode="const", return_features=True)
        return image, self.head(features, self.generator.image_size)


class _PyramidFlat(nn.Module):
    """The pyramid generator with flat inputs: z, labels, then features and mask per level."""

    def __init__(self, generator, levels):
        super().__init__()
        self.generator, self.levels = generator, tuple(levels)

    def forward(self, z, labels, *per_level):
        features = dict(zip(self.levels, per_level[0::2]))
        masks = dict(zip(self.levels, per_level[1::2]))
        return self.generator(z, features, masks, labels)


def export_model(module: nn.Module, example, path: Path, input_names, output_names) -> Path:
    """One ONNX file with a dynamic batch axis on every input and output; onnx.checker passes."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = example if isinstance(example, tuple) else (example,)
    input_names = [input_names] if isinstance(input_names, str) else list(input_names)
    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=OPSET,
                      input_names=input_names, output_names=list(output_names), dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def parity(module: nn.Module, path: Path, example, threads: int = 2) -> float:
    """Max abs difference between ONNX Runtime and eager torch outputs on `example` (a tensor or a tuple)."""
    session = ort_session(path, threads)
    example = example if isinstance(example, tuple) else (example,)
    outputs = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), example)})
    with torch.no_grad():
        expected = module.eval()(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))


def export_onnx(models: str = "artifacts", out: str = "exports/onnx", head: str = "lse", seed: int = 0) -> dict:
    """Export the bundle's classifier, mapping, synthesis+head and pyramid generator; check each at
    another batch size than it was traced with. Writes <out>/parity.json and returns it."""
    models, out = Path(models), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    report, jobs = {}, []
    if (models / "classifier").exists():
        classifier = load_checkpoint(models / "classifier")
        size = classifier.image_size
        jobs.append(("classifier", _ClassifierLevels(classifier),
                     lambda b: torch.rand(b, 3, size, size, generator=gen) * 2 - 1,
                     "image", tuple(classifier.features(torch.zeros(1, 3, size, size)).keys())))
        if (models / "pyramid").exists():
            jobs.append(_pyramid_job(load_checkpoint(models / "pyramid"), classifier, gen))
    if (models / "stylegan").exists():
        g = load_checkpoint(models / "stylegan")
        ws = lambda b: g.broadcast(g.mapping_w(torch.randn(b, g.z_dim, generator=gen))).contiguous().detach()
        jobs.append(("mapping", _Mapping(g), lambda b: torch.randn(b, g.z_dim, generator=gen), "z", ("w",)))
        jobs.append(("synthesis", _Synthesis(g), ws, "ws", ("image",)))
        if (models / "heads" / head).exists():
            fused = _SynthesisWithHead(g, load_checkpoint(models / "heads" / head))
            jobs.append((f"synthesis_{head}", fused, ws, "ws", ("image", "logits")))
    for name, module, example, input_name, output_names in jobs:
        path = export_model(module, example(2), out / f"{name}.onnx", input_name, output_names)
        diff = parity(module, path, example(3))  # another batch size: the batch axis is dynamic
        report[f"{name}.max_abs_diff"] = diff
        report[f"{name}.parity"] = diff <= PARITY_TOLERANCE
        report[f"{name}.path"] = str(path)
    (out / "parity.json").write_text(json.dumps(report, indent=2))
    return report


def ensure_exported(models: str | Path, cache: str | Path) -> Path:
    """The bundle's graphs in <cache>/<fingerprint of its weights>/ (what `semgen serve --onnx-dir CACHE`
    opens); exported with parity checks unless already there."""
    bundle = Bundle(models)
    out = bundle.onnx_dir(cache)
    if bundle.onnx_up_to_date(cache):
        return out
    report = export_onnx(str(models), str(out), head=ONNX_HEAD)
    failed = [k.split(".")[0] for k, ok in report.items() if k.endswith(".parity") and not ok]
    if failed:
        raise RuntimeError(f"ONNX export of {', '.join(failed)} does not match eager PyTorch; see {out}/parity.json")
    stamp = {"models": str(models), "fingerprint": bundle.fingerprint(), "export_version": ONNX_EXPORT_VERSION}
    (out / "bundle.json").write_text(json.dumps(stamp))  # only graphs that passed
    return out


def _pyramid_job(generator, classifier, gen: torch.Generator):
    """Inputs: real classifier features of random images, random 0/1 masks (some levels all zero)."""
    size = classifier.image_size
    levels = tuple(classifier.features(torch.zeros(1, 3, size, size)).keys())

    def example(b):
        with torch.no_grad():
            feats = classifier.features(torch.rand(b, 3, size, size, generator=gen) * 2 - 1)
        inputs = [torch.randn(b, generator.z_dim, generator=gen), torch.randint(0, generator.num_classes, (b,), generator=gen)]
        for i, level in enumerate(levels):
            f = feats[level]
            shape = (b, 1, *f.shape[2:]) if f.dim() == 4 else (b, 1)
            mask = (torch.rand(shape, generator=gen) < 0.5).float() * (i % 3 != 0)  # every third level left out
            inputs += [f, mask]
        return tuple(inputs)

    names = ["z", "labels"] + [f"{level}_{kind}" for level in levels for kind in ("features", "mask")]
    return "pyramid", _PyramidFlat(generator, levels), example, names, ("image",)
