import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

import export.tensorrt as trt_export
import semgen_cli
from export.onnx import export_model, ort_session
from export.tensorrt import FP16_TOLERANCE, engine_cache_key, random_feeds, tensorrt_available


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is importable here")
def test_tensorrt_is_reported_unavailable_with_a_reason():
    available, reason = tensorrt_available()
    assert not available and "tensorrt" in reason


def test_cli_exits_2_with_one_clear_line_when_tensorrt_is_unavailable(tmp_path, monkeypatch, capsys):
    # forced unavailable, so this runs the same on GPU nodes
    monkeypatch.setattr(trt_export, "tensorrt_available", lambda: (False, "`import tensorrt` fails"))
    with pytest.raises(SystemExit) as exit_:
        semgen_cli.main(["export", "tensorrt", "--onnx", str(tmp_path / "onnx"), "--out", str(tmp_path / "trt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("TensorRT is not available here: `import tensorrt` fails.") and "ONNX Runtime" in err
    assert "Traceback" not in err and not (tmp_path / "trt").exists()


def test_engine_cache_key_follows_the_onnx_bytes_the_gpu_and_the_options(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph one")
    args = dict(gpu_name="NVIDIA H100 80GB HBM3", trt_version="10.3.0", fp16=True, max_batch=32, compute_capability="9.0")
    key = engine_cache_key(onnx_path, **args)
    assert key == engine_cache_key(onnx_path, **args) and len(key) == 64
    for change in (dict(gpu_name="NVIDIA A100-SXM4-80GB"), dict(fp16=False), dict(max_batch=16),
                   dict(trt_version="10.4.0"), dict(compute_capability="8.0")):
        assert engine_cache_key(onnx_path, **{**args, **change}) != key, change
    onnx_path.write_bytes(b"graph two")
    assert engine_cache_key(onnx_path, **args) != key


class _Toy(nn.Module):
    """An embedding on `labels`, an `image` and a `_mask` input: what random_feeds must tell apart."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)

    def forward(self, image, labels, level_mask):
        return image.mean((1, 2, 3))[:, None] * level_mask + self.embed(labels)


def test_random_feeds_follow_the_onnx_inputs_and_run_on_onnx_runtime(tmp_path):
    example = (torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), torch.ones(2, 1))
    path = export_model(_Toy(), example, tmp_path / "toy.onnx", ["image", "labels", "level_mask"], ["out"])
    feeds = random_feeds(path, batch=64)
    assert feeds["image"].shape == (64, 3, 4, 4) and feeds["image"].dtype == np.float32
    assert feeds["image"].min() >= -1 and feeds["image"].max() <= 1
    assert feeds["labels"].dtype == np.int64 and set(feeds["labels"]) == set(range(5))  # 5 embedding rows
    assert set(np.unique(feeds["level_mask"])) == {0.0, 1.0}
    assert ort_session(path, threads=1).run(None, feeds)[0].shape == (64, 4)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from export.onnx import export_onnx
    from random_bundles import make_random_bundle, make_random_semantics_bundle

    root = tmp_path_factory.mktemp("trt")
    bundle = make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)
    export_onnx(str(bundle), str(root / "onnx"))
    return root / "onnx"


@pytest.mark.gpu
def test_fp16_engines_match_onnx_runtime_and_are_reused_from_the_cache(onnx_dir, tmp_path):
    first = trt_export.export_tensorrt(str(onnx_dir), str(tmp_path / "trt"), max_batch=8)
    models = ("classifier", "mapping", "synthesis_lse", "pyramid")
    for name in models:
        assert first[f"{name}.parity"] and first[f"{name}.max_abs_diff"] <= FP16_TOLERANCE, (name, first)
        assert not first[f"{name}.cached"]
    assert json.loads((tmp_path / "trt" / "parity.json").read_text())["classifier.parity"]
    second = trt_export.export_tensorrt(str(onnx_dir), str(tmp_path / "trt"), max_batch=8)
    for name in models:
        assert second[f"{name}.cached"] and second[f"{name}.engine"] == first[f"{name}.engine"]


@pytest.mark.gpu
def test_engine_accepts_any_batch_in_its_profile(onnx_dir, tmp_path):
    plan = trt_export.build_engine(onnx_dir / "mapping.onnx", tmp_path / "trt", max_batch=8)
    model = trt_export.TensorRTModel(plan)
    session = ort_session(onnx_dir / "mapping.onnx", threads=1)
    for batch in (1, 8):
        feeds = random_feeds(onnx_dir / "mapping.onnx", batch=batch)
        (got,), (expected,) = model(feeds), session.run(None, feeds)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= FP16_TOLERANCE
