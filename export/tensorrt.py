"""`semgen export tensorrt`: FP16 TensorRT engines built from the ONNX files of `semgen export onnx`,
one per model, with a dynamic batch axis (1 … max_batch) and a parity check against ONNX Runtime.

Engines are specific to the GPU, the TensorRT version and the build options, so they are cached as
<cache>/<model>-<key[:16]>.plan with a JSON sidecar naming what went into the key; a cached engine is
reused only when the full key matches. Written against the TensorRT 10 Python API; device memory is
torch CUDA tensors (no pycuda).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from semgen.runtime.tensorrt import TensorRTModel, TensorRTUnavailable, tensorrt_available

# FP16 keeps ~3 significant decimal digits (10-bit mantissa) and the rounding adds up over the layers;
# the outputs are images in [-1, 1], logits and activations of order 1, so a correct engine lands around
# 1e-3 … 1e-2 while a wrong input binding or a broken layer shows up as differences of order 1.
FP16_TOLERANCE = 5e-2
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def engine_cache_key(onnx_path, gpu_name: str, trt_version: str, fp16: bool, max_batch: int,
                     compute_capability: str = "") -> str:
    return hashlib.sha256(json.dumps(_key_parts(onnx_path, gpu_name, trt_version, fp16, max_batch,
                                                compute_capability), sort_keys=True).encode()).hexdigest()


def _key_parts(onnx_path, gpu_name, trt_version, fp16, max_batch, compute_capability) -> dict:
    return {"onnx_sha256": hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest(), "gpu": gpu_name,
            "compute_capability": compute_capability, "tensorrt": trt_version, "fp16": bool(fp16),
            "max_batch": int(max_batch)}


def _engine_paths(onnx_path: Path, cache_dir: Path, max_batch: int, fp16: bool):
    """(plan path, sidecar content) for this ONNX file on GPU 0 with this TensorRT."""
    import tensorrt as trt

    gpu, cc = torch.cuda.get_device_name(0), "{}.{}".format(*torch.cuda.get_device_capability(0))
    parts = _key_parts(onnx_path, gpu, trt.__version__, fp16, max_batch, cc)
    key = engine_cache_key(onnx_path, gpu, trt.__version__, fp16, max_batch, cc)
    return cache_dir / f"{onnx_path.stem}-{key[:16]}.plan", {"model": onnx_path.stem, **parts, "key": key}


def _is_cached(plan: Path, sidecar: dict) -> bool:
    meta = plan.with_suffix(".json")
    return plan.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == sidecar["key"]


def build_engine(onnx_path, cache_dir, max_batch: int = 32, fp16: bool = True) -> Path:
    """The serialized engine for `onnx_path`, from the cache when its key matches, else built now."""
    import tensorrt as trt

    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    plan, sidecar = _engine_paths(onnx_path, cache_dir, max_batch, fp16)
    if _is_cached(plan, sidecar):
        return plan
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # FP16 kernels where faster; I/O stays as in the ONNX file
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):  # dynamic batch on every input, the other dims as exported
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise ValueError(f"{onnx_path}: {tensor.name} has a dynamic axis besides the batch: {tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (1, *rest), (max(1, max_batch // 2), *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = plan.with_suffix(".tmp")  # write then rename: an interrupted build leaves no half engine
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    plan.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return plan


def random_feeds(onnx_path, batch: int = 3, seed: int = 0) -> dict:
    """Inputs for a parity check from the ONNX input names, shapes and types: `labels` in 0 … classes-1
    (else other integer inputs in 0 … 7), `*_mask` random 0/1, `image` uniform in [-1, 1], other floats
    standard normal; the batch axis is `batch`."""
    import onnx

    from export.onnx import ort_session

    rng, feeds = np.random.default_rng(seed), {}
    model = onnx.load(str(onnx_path))
    for spec in ort_session(onnx_path, threads=1).get_inputs():
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        dtype = _ORT_DTYPES[spec.type]
        if np.issubdtype(dtype, np.integer):
            high = _embedding_rows(model, spec.name) if spec.name == "labels" else None
            feeds[spec.name] = rng.integers(0, high or 8, shape).astype(dtype)
        elif spec.name.endswith("_mask"):
            feeds[spec.name] = (rng.random(shape) < 0.5).astype(dtype)
        elif spec.name == "image":
            feeds[spec.name] = rng.uniform(-1, 1, shape).astype(dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _embedding_rows(model, input_name: str) -> int | None:
    """Number of classes: rows of the embedding table that `input_name` indexes (a Gather on a weight)."""
    weights = {w.name: w for w in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] == input_name and node.input[0] in weights:
            return int(weights[node.input[0]].dims[0])
    return None


def export_tensorrt(onnx_dir: str = "exports/onnx", cache_dir: str = "exports/tensorrt", max_batch: int = 32) -> dict:
    """Build (or reuse) an FP16 engine per ONNX file and compare it with ONNX Runtime on a batch of 3.
    Writes <cache_dir>/parity.json and returns it."""
    available, reason = tensorrt_available()
    if not available:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    from export.onnx import ort_session

    onnx_dir, cache_dir = Path(onnx_dir), Path(cache_dir)
    paths = sorted(onnx_dir.glob("*.onnx"))
    if not paths:
        raise FileNotFoundError(f"no .onnx files in {onnx_dir}; run `semgen export onnx --out {onnx_dir}` first")
    report = {"tolerance": FP16_TOLERANCE, "gpu": torch.cuda.get_device_name(0), "tensorrt": trt.__version__}
    for path in paths:
        name = path.stem
        cached = _is_cached(*_engine_paths(path, cache_dir, max_batch, True))
        plan = build_engine(path, cache_dir, max_batch=max_batch, fp16=True)
        feeds = random_feeds(path, batch=min(3, max_batch))  # inside the engine's batch profile
        session = ort_session(path)
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        engine = TensorRTModel(plan)
        got = dict(zip(engine.output_names, engine(feeds)))
        diff = max(float(np.abs(got[k].astype(np.float32) - v).max()) for k, v in expected.items())
        report[f"{name}.max_abs_diff"] = diff
        report[f"{name}.max_abs_output"] = max(float(np.abs(v).max()) for v in expected.values())
        report[f"{name}.parity"] = diff <= FP16_TOLERANCE
        report[f"{name}.engine"] = str(plan)
        report[f"{name}.cached"] = cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "parity.json").write_text(json.dumps(report, indent=2))
    return report
