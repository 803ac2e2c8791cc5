"""The pyramid evaluation: the Fréchet distance itself, and the report on a tiny random bundle."""

import json

import numpy as np
import pytest

from random_bundles import make_random_bundle
from training.eval_pyramid import eval_pyramid
from semgen.checkpoints import save_checkpoint
from semgen.data.scenes import CLASSES, render_batch
from semgen.networks.segmenter import UNetSegmenter
from training.fd import frechet_distance
from training.grid import grid_artifact, grid_periods
from training.layout import same_class_disagreement, sample_disagreement


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
    segmenter = UNetSegmenter(num_classes=len(CLASSES), channels=(4, 8), class_names=CLASSES)
    save_checkpoint(bundle / "segmenter", segmenter.eval(), segmenter.config)
    result = eval_pyramid(str(bundle), n=4, samples=2, ops_n=3, report_dir=str(tmp_path / "report"),
                          progress=lambda msg: None)
    assert list(result["levels"]) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8"]
    for numbers in result["levels"].values():
        assert set(numbers) == {"fd_fc7", "fidelity", "pixel_l1", "class_agreement", "diversity",
                                "diversity_features", "grid_artifact", "grid_by_period", "layout_diversity"}
        assert 0 <= numbers["class_agreement"] <= 1 and numbers["fd_fc7"] >= 0 and numbers["diversity"] > 0
        assert list(numbers["grid_by_period"]) == ["2", "4", "8", "16", "32"][:len(numbers["grid_by_period"])]
        assert numbers["grid_artifact"] == max(numbers["grid_by_period"].values()) > 0
        assert 0 <= numbers["layout_diversity"] <= 1
    assert {"repaint", "composite", "relabel", "unnatural", "shape", "fd_fc7_real", "layout_diversity_real",
            "grid_artifact_real"} <= set(result)
    assert 0 <= result["layout_diversity_real"] <= 1
    assert 0 <= result["repaint"]["outside_change"] <= 1 and 0 <= result["relabel"]["agreement"] <= 1
    assert set(result["unnatural"]) >= {"line_drawing", "grayscale", "painting", "class_agreement"}
    assert result["unnatural"]["grayscale"]["chroma_input"] == 0  # a grayscale input has no colour
    for name in ("pyramid.json", "levels.png", "repaint.png", "composite.png", "relabel.png", "unnatural.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "pyramid.json").read_text()) == result



def test_grid_artifact_is_one_for_real_scenes_and_peaks_at_a_checkerboard_period():
    real, _, _, _ = render_batch(np.arange(300), 64)
    other, _, _, _ = render_batch(10_000 + np.arange(300), 64)
    periods = grid_periods(64, 2)
    assert periods == (2, 4, 8, 16, 32)
    assert grid_artifact(other, real, periods)["grid_artifact"] == pytest.approx(1.0, abs=0.1)
    y, x = np.mgrid[:64, :64]
    checker = ((y // 2 + x // 2) % 2 * 2 - 1) * 4  # period 4, ±4 of 255: faint but regular
    textured = np.clip(other.astype(int) + checker[None, :, :, None], 0, 255).astype(np.uint8)
    by_period = grid_artifact(textured, real, periods)["by_period"]
    assert by_period["4"] > 3 and by_period["2"] == pytest.approx(1.0, abs=0.1)


def test_layout_disagreement_counts_relabelled_pixels():
    a = np.zeros((3, 8, 8), np.int64)
    b = a.copy()
    b[:, :2] = 1  # a quarter of the pixels differ
    assert sample_disagreement(np.stack([a, b], 1)) == pytest.approx(0.25)
    assert sample_disagreement(np.stack([a, a, b], 1)) == pytest.approx((0 + 0.25 + 0.25) / 3)
    # real pairs are made within a category only: category 0 = (a, a), category 1 = (a, b)
    labels, cats = np.stack([a[0], a[0], a[0], b[0]]), np.array([0, 0, 1, 1])
    assert same_class_disagreement(labels, cats) == pytest.approx(0.125)
