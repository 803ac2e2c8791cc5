import numpy as np
import pytest

from semgen.data.scenes import ATTRIBUTES, CATEGORIES, CLASS_INDEX, CLASSES, RENDITIONS, render_batch, render_scene

GROUND = [CLASS_INDEX[c] for c in ("water", "sand", "grass", "road")]
SKY = [CLASS_INDEX[c] for c in ("sky", "cloud", "sun")]


def test_world_size():
    assert len(CATEGORIES) >= 8 and len(CLASSES) >= 10
    kinds = set(ATTRIBUTES.values())
    assert {"layout", "objects", "attribute", "color"} <= kinds


@pytest.mark.parametrize("rendition", RENDITIONS)
def test_same_seed_same_pixels(rendition):
    a = render_scene(123, 64, rendition=rendition)
    b = render_scene(123, 64, rendition=rendition)
    c = render_scene(124, 64, rendition=rendition)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.attributes == b.attributes
    assert not np.array_equal(a.image, c.image)


def test_any_resolution():
    for size in (32, 96, 128):
        s = render_scene(5, size)
        assert s.image.shape == (size, size, 3) and s.labels.shape == (size, size)


def test_labels_agree_with_attributes():
    for seed in range(200):
        s = render_scene(seed, 64)
        a = s.attributes
        rows = np.arange(64)[:, None] + 0.5
        above = np.broadcast_to(rows / 64 < a["horizon"] - 0.02, s.labels.shape)
        below = np.broadcast_to(rows / 64 > a["horizon"] + 0.02, s.labels.shape)
        # ground classes never above the horizon, sky classes never below it
        assert not np.isin(s.labels[above], GROUND).any(), seed
        assert not np.isin(s.labels[below], SKY).any(), seed
        # object counts match what is drawn
        has_tree = (s.labels == CLASS_INDEX["tree"]).any()
        assert has_tree == (a["tree_count"] > 0), seed
        has_building = (s.labels == CLASS_INDEX["building"]).any()
        assert has_building == (a["building_count"] > 0), seed
        if a["mountain_height"] == 0:
            assert not (s.labels == CLASS_INDEX["mountain"]).any(), seed


def test_categories_look_different():
    # mean colour of the lower half differs by category (sand vs snow vs grass vs road ...)
    means = {}
    for c, name in enumerate(CATEGORIES):
        imgs = np.stack([render_scene(s, 32, category=c).image for s in range(20)])
        means[name] = imgs[:, 20:].reshape(-1, 3).mean(0)
    assert np.linalg.norm(means["desert"] - means["snowy_mountains"]) > 30
    assert np.linalg.norm(means["forest"] - means["city_street"]) > 30
    # night is dark
    assert means["night_city"].mean() < means["city_street"].mean() - 30


def test_renditions():
    photo = render_scene(3, 64).image.astype(int)
    gray = render_scene(3, 64, rendition="grayscale").image.astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    line = render_scene(3, 64, rendition="line_drawing").image
    assert set(np.unique(line)) <= {20, 247} and (line == 20).mean() < 0.4  # dark lines on paper
    paint = render_scene(3, 64, rendition="painting").image.astype(int)
    assert 5 < np.abs(paint - photo).mean() < 60
    with pytest.raises(ValueError, match="rendition"):
        render_scene(3, 64, rendition="sketchy")


def test_render_batch():
    images, labels, cats, attrs = render_batch([1, 2, 3], 32)
    assert images.shape == (3, 32, 32, 3) and labels.shape == (3, 32, 32)
    assert cats.shape == (3,) and attrs.shape == (3, len(ATTRIBUTES))
    assert np.array_equal(images[1], render_scene(2, 32).image)
