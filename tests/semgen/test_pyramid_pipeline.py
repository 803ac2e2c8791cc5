import numpy as np
import pytest

from random_bundles import make_random_bundle
from semgen.data.scenes import render_scene
from semgen.networks.classifier import LEVELS
from semgen.pipelines.pyramid import PyramidPipeline, paste_box


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
        (dict(levels="conv9"), "level"),
        (dict(num_samples=0), "num_samples"),
        (dict(class_index=99), "class_index"),
        (dict(image=np.zeros((4, 4, 3), np.uint8)), "image"),
        (dict(image=np.zeros((32, 32), np.uint8)), "image"),
    ],
)
def test_bad_input_names_the_field(pipe, kwargs, field):
    args = dict(image=render_scene(4, 64).image, levels="conv1", num_samples=1, seed=0) | kwargs
    with pytest.raises(ValueError, match=f"^{field}:"):
        pipe.generate(**args)


def test_level_masks_pass_features_only_where_on(pipe):
    ref = render_scene(5, 48).image
    zeros, ones = np.zeros((48, 48), np.float32), np.ones((48, 48), np.float32)
    deep = pipe.generate(ref, {"conv4": None}, 2, seed=3)
    # an all-zero mask adds nothing, an all-one mask is the whole map, a half mask is something else
    assert np.array_equal(pipe.generate(ref, {"conv1": zeros, "conv4": None}, 2, seed=3).images, deep.images)
    whole = pipe.generate(ref, {"conv1": None, "conv4": None}, 2, seed=3)
    assert np.array_equal(pipe.generate(ref, {"conv1": ones, "conv4": None}, 2, seed=3).images, whole.images)
    half = ones.copy()
    half[:, :24] = 0
    mixed = pipe.generate(ref, {"conv1": half, "conv4": None}, 2, seed=3)
    assert mixed.level == "conv4"
    assert not np.array_equal(mixed.images, deep.images) and not np.array_equal(mixed.images, whole.images)


def test_repaint_is_the_level_whole_and_shallower_levels_outside_the_region(pipe):
    ref = render_scene(6, 40).image
    region = np.zeros((40, 40), np.float32)
    region[8:24, 10:30] = 1
    got = pipe.repaint(ref, region, "conv4", 2, seed=9)
    keep = 1 - region
    by_hand = pipe.generate(ref, {"conv1": keep, "conv2": keep, "conv3": keep, "conv4": None}, 2, seed=9)
    assert got.level == "conv4" and np.array_equal(got.images, by_hand.images)


def test_composite_is_a_repaint_of_the_naive_paste(pipe):
    background, obj = render_scene(7, 32).image, render_scene(8, 50).image
    got = pipe.composite(background, obj, (4, 6, 16, 12), "conv5", 2, seed=1)
    pasted, region = paste_box(background, obj, (4, 6, 16, 12))
    assert region.sum() == 16 * 12 and np.array_equal(pasted[:6], background[:6])
    assert not np.array_equal(pasted[6:18, 4:20], background[6:18, 4:20])
    assert np.array_equal(got.reference, pasted) and np.array_equal(got.images, pipe.repaint(pasted, region, "conv5", 2, 1).images)


@pytest.mark.parametrize("call, field", [
    (lambda p, ref: p.generate(ref, {"conv1": np.ones((10, 10))}, 1, 0), r"mask\[conv1\]"),
    (lambda p, ref: p.generate(ref, {"conv1": np.full((64, 64), 2.0)}, 1, 0), r"mask\[conv1\]"),
    (lambda p, ref: p.generate(ref, {}, 1, 0), "levels"),
    (lambda p, ref: p.repaint(ref, np.zeros((64, 64)), "conv5", 1, 0), "region"),
    (lambda p, ref: p.repaint(ref, np.ones((64, 65)), "conv5", 1, 0), "region"),
    (lambda p, ref: p.repaint(ref, np.ones((64, 64)), "conv6", 1, 0), "level"),
    (lambda p, ref: p.composite(ref, ref, (60, 0, 10, 10), "conv5", 1, 0), "box"),
    (lambda p, ref: p.composite(ref, ref, (0, 0, 0, 10), "conv5", 1, 0), "box"),
    (lambda p, ref: p.composite(ref, ref[:, :, 0], (0, 0, 10, 10), "conv5", 1, 0), "object_image"),
    (lambda p, ref: p.repaint(np.zeros((64, 96, 3), np.uint8), np.pad(np.ones((64, 10)), ((0, 0), (0, 86))), "conv5", 1, 0), "region"),
])
def test_operation_errors_name_the_field(pipe, call, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        call(pipe, render_scene(9, 64).image)
