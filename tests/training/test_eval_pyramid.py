"""The pyramid evaluation: the Fréchet distance itself, and the report on a tiny random bundle."""

import json

import numpy as np
import pytest

from random_bundles import make_random_bundle
from training.eval_pyramid import eval_pyramid
from training.fd import frechet_distance


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(0, 1, (20000, 3)) * np.array([1, 2, 3]) + np.array([1, 0, 0])
    # independent axes: FD = |Δμ|² + Σ (σa − σb)² = 1 + 0 + 1 + 4
    assert frechet_distance(a, b) == pytest.approx(6.0, abs=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_eval_pyramid_reports_every_level_and_operation(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    result = eval_pyramid(str(bundle), n=4, samples=2, ops_n=3, report_dir=str(tmp_path / "report"),
                          progress=lambda msg: None)
    assert list(result["levels"]) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8"]
    for numbers in result["levels"].values():
        assert set(numbers) == {"fd_fc7", "fidelity", "pixel_l1", "class_agreement", "diversity",
                                "diversity_features"}
        assert 0 <= numbers["class_agreement"] <= 1 and numbers["fd_fc7"] >= 0 and numbers["diversity"] > 0
    assert {"repaint", "composite", "relabel", "unnatural", "shape", "fd_fc7_real"} <= set(result)
    assert 0 <= result["repaint"]["outside_change"] <= 1 and 0 <= result["relabel"]["agreement"] <= 1
    assert set(result["unnatural"]) >= {"line_drawing", "grayscale", "painting", "class_agreement"}
    assert result["unnatural"]["grayscale"]["chroma_input"] == 0  # a grayscale input has no colour
    for name in ("pyramid.json", "levels.png", "repaint.png", "composite.png", "relabel.png", "unnatural.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "pyramid.json").read_text()) == result

