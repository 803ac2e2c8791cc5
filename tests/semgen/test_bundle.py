"""The shipped default models in artifacts/ do what the README says (marked `bundle`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from semgen.checkpoints import load_checkpoint
from semgen.data.loaders import SceneSource, to_tensor, to_uint8
from semgen.pipelines.pyramid import PyramidPipeline

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def pipe():
    return PyramidPipeline.from_dir(ARTIFACTS)


@pytest.fixture(scope="module")
def heldout():
    images, labels = SceneSource(64, heldout=True).batch(3, 24)
    return to_uint8(images), labels


@torch.no_grad()
def test_classifier_is_accurate_on_heldout_scenes():
    model = load_checkpoint(ARTIFACTS / "classifier")
    images, labels = SceneSource(model.image_size, heldout=True).batch(7, 300)
    assert (model(images).argmax(1) == labels).float().mean() >= 0.9


@torch.no_grad()
def test_shallow_levels_give_scene_like_images_of_the_same_category(pipe, heldout):
    refs, labels = heldout
    for level, max_l1 in (("conv1", 0.12), ("conv2", 0.16), ("conv3", 0.22)):
        outs = np.stack([pipe.generate(r, level, 1, seed=i).images[0] for i, r in enumerate(refs)])
        l1 = np.abs(outs.astype(np.float32) - refs.astype(np.float32)).mean() / 255
        agree = (pipe.classifier(to_tensor(outs)).argmax(1) == labels).float().mean().item()
        assert l1 < max_l1, (level, l1)
        assert agree >= 0.8, (level, agree)


@torch.no_grad()
def test_deep_levels_are_more_diverse_than_shallow(pipe, heldout):
    refs, _ = heldout

    def diversity(level):
        pairs = [pipe.generate(r, level, 2, seed=i).images.astype(np.float32) for i, r in enumerate(refs[:12])]
        return np.mean([np.abs(p[0] - p[1]).mean() for p in pairs])

    assert diversity("fc8") > diversity("conv1")


def test_repaint_changes_the_region_and_keeps_the_rest(pipe, heldout):
    refs, _ = heldout
    region = np.zeros((64, 64), np.float32)
    region[16:48, 12:44] = 1
    outside, inside = [], []
    for i, ref in enumerate(refs[:12]):
        diff = np.abs(pipe.repaint(ref, region, "conv5", 1, seed=i).images[0].astype(np.float32) - ref).mean(-1) / 255
        outside.append(diff[region == 0].mean())
        inside.append(diff[region == 1].mean())
    # shipped generator: 0.041 outside, 0.181 inside; issue 19 asks outside <= 1/3 of inside
    assert np.mean(outside) < 0.06 and np.mean(inside) > 3 * np.mean(outside)


def test_grayscale_and_line_drawing_references_give_colour_photos(pipe):
    from semgen.data.scenes import render_batch

    def chroma(images):
        x = images.astype(np.float32) / 255
        return (x.max(-1) - x.min(-1)).mean()

    for rendition in ("grayscale", "line_drawing"):
        inputs = render_batch(range(2_000_000_000, 2_000_000_012), 64, rendition)[0]
        outs = np.stack([pipe.generate(im, "conv5", 1, seed=i).images[0] for i, im in enumerate(inputs)])
        assert chroma(inputs) < 0.01 and chroma(outs) > 0.1, rendition
