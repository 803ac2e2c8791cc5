"""The shipped linear-semantics models in artifacts/ do what the README says (marked `bundle`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from semgen.pipelines.semantics import SEGMENTER, SemanticsPipeline
from training.iou import IoUMeter
from training.segmenter import scene_batch

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def pipe():
    return SemanticsPipeline.from_dir(ARTIFACTS)


@torch.no_grad()
def test_segmenter_labels_heldout_scenes(pipe):
    images, labels = scene_batch(11, 64, pipe.image_size, heldout=True)
    meter = IoUMeter(pipe.segmenter.num_classes)
    meter.add(pipe.segmenter(images).argmax(1), labels)
    assert meter.miou() > 0.75


def test_shipped_heads_agree_with_the_segmenter_on_fresh_samples(pipe):
    samples = pipe.sample(seeds=range(10_000_000, 10_000_040), predictor=SEGMENTER)
    # floors a little under `semgen eval heads` (1,000 samples: 0.78, 0.79, 0.74, 0.67)
    for head, floor in (("lse", 0.68), ("nse1", 0.7), ("nse2", 0.64), ("lse-8shot", 0.58)):
        meter = IoUMeter(pipe.segmenter.num_classes)
        meter.add(torch.as_tensor(pipe.segment(samples.latents, head)), torch.as_tensor(samples.masks))
        assert meter.miou() > floor, head


def test_scs_with_the_8shot_head_beats_its_random_start(pipe):
    target = pipe.sample(seeds=[12_345], psi=0.7, predictor=SEGMENTER).masks[0]
    start = pipe.sample_conditional(target, "lse-8shot", 2, seed=3, n_init=10, iterations=0)
    done = pipe.sample_conditional(target, "lse-8shot", 2, seed=3, n_init=10, iterations=30)
    assert done.scores.mean() > start.scores.mean()
    assert np.array_equal(done.images, pipe.sample_conditional(target, "lse-8shot", 2, seed=3, n_init=10,
                                                                iterations=30).images)
