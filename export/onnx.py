"""`semgen export onnx`: the forward-only models as ONNX graphs with a dynamic batch axis, each
checked with `onnx.checker` and against eager PyTorch (max abs difference).

    classifier.onnx   image [B, 3, S, S] in [-1, 1] -> one output per level (conv1 … fc8)
    mapping.onnx      z [B, z_dim] -> w [B, w_dim] (no truncation)
    synthesis_<head>.onnx
                      ws [B, num_ws, w_dim] -> image [B, 3, S, S], logits [B, classes, S, S]
                      (the layer-wise generator fused with a semantic head)

Not yet exported: the pyramid generator (issue 7 is in progress).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semgen.checkpoints import load_checkpoint

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


class _SynthesisWithHead(nn.Module):
    def __init__(self, generator, head):
        super().__init__()
        self.generator, self.head = generator, head

    def forward(self, ws):
        image, features = self.generator.synthesis(ws, noise_mode="const", return_features=True)
        return image, self.head(features, self.generator.image_size)


def export_model(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names) -> Path:
    """One ONNX file with a dynamic batch axis on the input and every output; onnx.checker passes."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in (input_name, *output_names)}
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=[input_name], output_names=list(output_names), dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def parity(module: nn.Module, path: Path, example: torch.Tensor, threads: int = 2) -> float:
    """Max abs difference between ONNX Runtime and eager torch outputs on `example`."""
    session = ort_session(path, threads)
    outputs = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        expected = module.eval()(example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))


def ort_session(path: str | Path, threads: int = 2):
    """An ONNX Runtime session with full graph optimisation; the CUDA provider when it is there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


def export_onnx(models: str = "artifacts", out: str = "exports/onnx", head: str = "lse", seed: int = 0) -> dict:
    """Export the bundle's classifier, mapping and synthesis+head; check each at another batch size
    than it was traced with. Writes <out>/parity.json and returns it."""
    models, out = Path(models), Path(out)
    gen = torch.Generator().manual_seed(seed)
    report = {}
    classifier = load_checkpoint(models / "classifier")
    size = classifier.image_size
    jobs = [("classifier", _ClassifierLevels(classifier), lambda b: torch.rand(b, 3, size, size, generator=gen) * 2 - 1,
             "image", tuple(classifier.features(torch.zeros(1, 3, size, size)).keys()))]
    if (models / "stylegan").exists():
        g = load_checkpoint(models / "stylegan")
        jobs.append(("mapping", _Mapping(g), lambda b: torch.randn(b, g.z_dim, generator=gen), "z", ("w",)))
        if (models / "heads" / head).exists():
            fused = _SynthesisWithHead(g, load_checkpoint(models / "heads" / head))
            ws = lambda b: g.broadcast(g.mapping_w(torch.randn(b, g.z_dim, generator=gen))).contiguous().detach()
            jobs.append((f"synthesis_{head}", fused, ws, "ws", ("image", "logits")))
    for name, module, example, input_name, output_names in jobs:
        path = export_model(module, example(2), out / f"{name}.onnx", input_name, output_names)
        diff = parity(module, path, example(3))  # another batch size: the batch axis is dynamic
        report[f"{name}.max_abs_diff"] = diff
        report[f"{name}.parity"] = diff <= PARITY_TOLERANCE
        report[f"{name}.path"] = str(path)
    (out / "parity.json").write_text(json.dumps(report, indent=2))
    return report
