"""IMAGINE on the shipped classifier does what the README says (marked `bundle`)."""

from pathlib import Path

import numpy as np
import pytest

from semgen.pipelines.imagine import Controls, ImaginePipeline, Position, Schedule, attribution_map, blob_centre
from training.eval_imagine import references

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def pipe():
    return ImaginePipeline.from_dir(ARTIFACTS)


def test_variations_keep_the_reference_class_and_differ_from_it(pipe):
    scene = references(2, pipe.image_size)[1]
    result = pipe.run(scene.image, 2, seed=0, schedule=Schedule(stage1=60, stage2=20))
    assert result.target_class == scene.category and (result.predicted == scene.category).all()
    assert np.abs(result.images.astype(float) - scene.image).mean() > 10  # new images, not copies


def test_position_control_moves_the_attribution_to_the_blob(pipe):
    scene = references(4, pipe.image_size)[3]  # a desert: the sun is what the classifier looks at
    centres = {}
    for corner in ((0.2, 0.2), (0.8, 0.8)):
        image = pipe.run(scene.image, 1, seed=1, controls=Controls(position=Position(*corner)),
                         schedule=Schedule(stage1=120, stage2=0)).images
        centres[corner] = blob_centre(attribution_map(pipe, image, scene.category)[0])
    for corner, (cx, cy) in centres.items():
        other = (1 - corner[0], 1 - corner[1])
        assert np.hypot(cx - corner[0], cy - corner[1]) < np.hypot(cx - other[0], cy - other[1])
