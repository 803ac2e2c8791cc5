import torch

from semgen.networks.classifier import LEVELS, Classifier
from semgen.pipelines.masks import level_masks
from training.masks import deeper_conv_masks, random_crop_masks, sample_training_masks

SHAPES = Classifier(image_size=64).level_shapes()


def test_crop_masks_have_one_hole():
    m = random_crop_masks(50, 64, torch.Generator().manual_seed(0))
    assert m.shape == (50, 64, 64)
    hole = 1 - m
    frac = hole.mean((1, 2))
    assert (frac >= 0.25**2 - 0.01).all() and (frac <= 0.6**2 + 0.01).all()
    # the hole is a box: its rows x cols count equals its area
    for h in hole[:5]:
        rows, cols = h.any(1).sum(), h.any(0).sum()
        assert rows * cols == h.sum()


def test_training_masks_follow_the_paper():
    gen = torch.Generator().manual_seed(1)
    masks, selected = sample_training_masks(SHAPES, 400, 64, 0.3, gen)
    assert set(selected.tolist()) == set(range(len(LEVELS)))
    n_crop = 0
    for i in range(400):
        k = int(selected[i])
        for j, level in enumerate(LEVELS):
            m = masks[level][i]
            if j == k:
                assert (m == 1).all()  # the selected level passes whole
            elif j > k:
                assert (m == 0).all()  # deeper levels are always off
            elif len(SHAPES[level]) == 1:
                assert (m == 0).all()  # fc levels are never partly on
        shallower = [masks[LEVELS[j]][i] for j in range(min(k, 5))]
        if shallower and shallower[0].sum() > 0:
            n_crop += 1
            assert (shallower[0] == 0).any()  # a hole where the crop is
    frac = n_crop / sum(1 for k in selected if k > 0)
    assert 0.2 < frac < 0.4


def test_deeper_conv_masks_mark_the_conv_levels_below_the_selected_one():
    selected = torch.tensor([LEVELS.index("conv1"), LEVELS.index("conv4"), LEVELS.index("fc7")])
    m = deeper_conv_masks(SHAPES, selected)
    assert set(m) == {"conv1", "conv2", "conv3", "conv4", "conv5"}  # never fc7/fc8 (the class)
    assert m["conv2"].shape == (3, 1, *SHAPES["conv2"][1:])
    on = {level: [bool(m[level][i].all()) for i in range(3)] for level in m}
    assert all(bool(m[level][i].any()) == on[level][i] for level in m for i in range(3))  # whole or nothing
    assert on["conv1"] == [False, False, False]  # nothing is shallower than conv1
    assert on["conv2"] == on["conv3"] == on["conv4"] == [True, False, False]
    assert on["conv5"] == [True, True, False]


def test_level_masks_from_region():
    region = torch.zeros(64, 64)
    region[:, :32] = 1
    m = level_masks(SHAPES, {"conv3": region, "fc7": None}, 2)
    assert m["conv3"].shape == (2, 1, 8, 8)
    assert (m["conv3"][:, :, :, :4] == 1).all() and (m["conv3"][:, :, :, 4:] == 0).all()
    assert m["fc7"].shape == (2, 1) and (m["fc7"] == 1).all()


def test_training_masks_can_be_made_from_chosen_levels_only():
    conv5, fc8 = LEVELS.index("conv5"), LEVELS.index("fc8")
    masks, selected = sample_training_masks(SHAPES, 200, 64, 0.3, torch.Generator().manual_seed(1), (conv5, fc8))
    assert set(selected.tolist()) == {conv5, fc8}
    assert (masks["fc8"][selected == fc8] == 1).all() and (masks["fc8"][selected == conv5] == 0).all()
