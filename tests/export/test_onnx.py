import numpy as np
import onnx
import torch

from export.onnx import PARITY_TOLERANCE, export_onnx, ort_session
from random_bundles import make_random_bundle, make_random_semantics_bundle
from semgen.checkpoints import load_checkpoint


def test_every_exported_model_passes_the_checker_and_matches_eager(tmp_path):
    bundle = make_random_semantics_bundle(make_random_bundle(tmp_path / "models", image_size=32), image_size=32)
    report = export_onnx(str(bundle), str(tmp_path / "onnx"))
    for name in ("classifier", "mapping", "synthesis", "synthesis_lse", "pyramid"):
        assert report[f"{name}.parity"] and report[f"{name}.max_abs_diff"] <= PARITY_TOLERANCE
        onnx.checker.check_model(onnx.load(report[f"{name}.path"]))
    # the batch axis is dynamic: 5 images through the classifier graph traced with 2
    session = ort_session(report["classifier.path"], threads=1)
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    logits = session.run(None, {"image": images.numpy()})[-1]
    with torch.no_grad():
        expected = load_checkpoint(bundle / "classifier")(images).numpy()
    assert logits.shape == (5, 8) and np.abs(logits - expected).max() <= PARITY_TOLERANCE


def test_a_version_2_pyramid_generator_exports_with_parity(tmp_path):
    """Bilinear upsampling, z-derived noise maps and mirrored padding: the same graph interface, the same numbers."""
    bundle = make_random_bundle(tmp_path / "models", image_size=64, upsample="bilinear", noise=True, padding="reflect")
    report = export_onnx(str(bundle), str(tmp_path / "onnx"))
    assert report["pyramid.parity"] and report["pyramid.max_abs_diff"] <= PARITY_TOLERANCE


def test_a_class_conditional_layer_wise_generator_exports_with_parity(tmp_path):
    """The class is picked from z inside the mapping graph (erf, floor, gather): same numbers as eager."""
    bundle = make_random_semantics_bundle(tmp_path / "models", image_size=16, num_classes=8)
    report = export_onnx(str(bundle), str(tmp_path / "onnx"))
    for name in ("mapping", "synthesis", "synthesis_lse"):
        assert report[f"{name}.parity"] and report[f"{name}.max_abs_diff"] <= PARITY_TOLERANCE
