import numpy as np
import pytest

from semgen.bundle import make_random_bundle
from semgen.data.scenes import render_scene
from semgen.networks.classifier import LEVELS
from semgen.pipelines.pyramid import PyramidPipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return PyramidPipeline.from_dir(make_random_bundle(tmp_path_factory.mktemp("bundle"), image_size=32))


def test_generate_every_level(pipe):
    ref = render_scene(1, 90).image  # any size: resized to the model's
    for level in LEVELS:
        r = pipe.generate(ref, level, num_samples=3, seed=5)
        assert r.images.shape == (3, 32, 32, 3) and r.images.dtype == np.uint8 and r.level == level


def test_same_seed_same_bytes(pipe):
    ref = render_scene(2, 64).image
    a = pipe.generate(ref, "conv2", 2, seed=11).images
    b = pipe.generate(ref, "conv2", 2, seed=11).images
    c = pipe.generate(ref, "conv2", 2, seed=12).images
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()


def test_class_override_changes_output(pipe):
    ref = render_scene(3, 64).image
    a = pipe.generate(ref, "conv3", 1, seed=0, class_index=0)
    b = pipe.generate(ref, "conv3", 1, seed=0, class_index=5)
    assert (a.class_index, b.class_index) == (0, 5) and not np.array_equal(a.images, b.images)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(level="conv9"), "level"),
        (dict(num_samples=0), "num_samples"),
        (dict(class_index=99), "class_index"),
        (dict(image=np.zeros((4, 4, 3), np.uint8)), "image"),
        (dict(image=np.zeros((32, 32), np.uint8)), "image"),
    ],
)
def test_bad_input_names_the_field(pipe, kwargs, field):
    args = dict(image=render_scene(4, 64).image, level="conv1", num_samples=1, seed=0) | kwargs
    with pytest.raises(ValueError, match=f"^{field}:"):
        pipe.generate(**args)
