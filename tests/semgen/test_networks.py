import pytest
import torch

from semgen.checkpoints import load_checkpoint, read_config, save_checkpoint
from semgen.networks.classifier import LEVELS, Classifier
from semgen.networks.pyramid import PyramidDiscriminator, PyramidGenerator, UpBlock
from semgen.pipelines.masks import level_masks


def tiny_pair(size=32):
    c = Classifier(image_size=size, num_classes=5, stage_channels=(4, 6, 8, 10, 12), convs_per_stage=(1, 1, 1, 1, 1), fc_dim=16)
    s = c.level_shapes()
    g = PyramidGenerator(image_size=size, num_classes=5, z_dim=8, embed_dim=4, level_channels=(4, 6, 8, 10, 12),
                         fc_dims=(s["fc7"][0], s["fc8"][0]), hidden_dim=16, gen_channels=(8, 8, 8, 8, 8, 8))
    return c.eval(), g.eval()


def test_classifier_levels_and_shapes():
    c, _ = tiny_pair(64)
    feats = c.features(torch.randn(3, 3, 64, 64))
    assert tuple(feats) == LEVELS
    expected = {"conv1": (4, 32, 32), "conv2": (6, 16, 16), "conv3": (8, 8, 8), "conv4": (10, 4, 4),
                "conv5": (12, 2, 2), "fc7": (16,), "fc8": (5,)}
    for level, shape in expected.items():
        assert tuple(feats[level].shape) == (3, *shape) == (3, *c.level_shapes()[level])
    assert c(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match="multiple of 32"):
        Classifier(image_size=48)


@pytest.mark.parametrize("level", LEVELS)
def test_generator_output_and_feature_use(level):
    torch.manual_seed(0)
    c, g = tiny_pair()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = c.features(x)
    masks = level_masks(c.level_shapes(), {level: None}, 2)
    z, y = torch.randn(2, 8), torch.tensor([0, 3])
    out = g(z, feats, masks, y)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    # the passed level's features change the output; a masked-out level's features do not
    other = {k: v * 0 + 5 for k, v in feats.items()}
    assert not torch.allclose(g(z, other, masks, y), out)
    zero = level_masks(c.level_shapes(), {level: torch.zeros(32, 32)}, 2)
    assert torch.allclose(g(z, other, zero, y), g(z, feats, {}, y), atol=1e-6)


def test_discriminator_is_class_conditional():
    d = PyramidDiscriminator(image_size=32, num_classes=5, channels=(4, 8, 8, 8))
    x = torch.randn(2, 3, 32, 32)
    s0, s1 = d(x, torch.tensor([0, 0])), d(x, torch.tensor([1, 1]))
    assert s0.shape == (2,) and not torch.allclose(s0, s1)


def test_checkpoint_round_trip(tmp_path):
    c, g = tiny_pair()
    save_checkpoint(tmp_path / "g", g, g.config, step=7, training={"data": "scenes"})
    meta = read_config(tmp_path / "g")
    assert meta["class"] == "PyramidGenerator" and meta["step"] == 7
    g2 = load_checkpoint(tmp_path / "g")
    feats = c.features(torch.randn(1, 3, 32, 32))
    masks = level_masks(c.level_shapes(), {"conv2": None}, 1)
    z, y = torch.randn(1, 8), torch.tensor([2])
    assert torch.equal(g(z, feats, masks, y), g2(z, feats, masks, y))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "missing")


def test_version_2_generator_upsamples_smoothly_and_draws_noise_from_z(tmp_path):
    c, v1 = tiny_pair()
    assert "upsample" not in v1.config and "noise" not in v1.config  # version-1 configs stay as they were
    s = c.level_shapes()
    torch.manual_seed(0)
    g = PyramidGenerator(image_size=32, num_classes=5, z_dim=8, embed_dim=4, level_channels=(4, 6, 8, 10, 12),
                         fc_dims=(s["fc7"][0], s["fc8"][0]), hidden_dim=16, gen_channels=(8, 8, 8, 8, 8, 8),
                         upsample="bilinear", noise=True).eval()
    assert g.config["upsample"] == "bilinear" and g.config["noise"] is True
    feats = c.features(torch.randn(2, 3, 32, 32))
    masks = level_masks(s, {"conv3": None}, 2)
    z, y = torch.randn(2, 8), torch.tensor([1, 1])
    quiet = g(z, feats, masks, y)
    for block in g.blocks:
        block.noise_scale.data.fill_(1.0)
    loud = g(z, feats, masks, y)
    assert not torch.allclose(quiet, loud)  # the noise reaches the image once its scale is not 0
    assert torch.equal(loud, g(z, feats, masks, y))  # a function of z: no hidden randomness
    save_checkpoint(tmp_path / "g2", g, g.config)
    assert torch.equal(load_checkpoint(tmp_path / "g2")(z, feats, masks, y), loud)
    with pytest.raises(ValueError, match="upsample"):
        PyramidGenerator(upsample="bicubic")


def test_reflect_padding_leaves_no_border_mark(tmp_path):
    # a block fed a constant map: zero padding makes the border pixels differ from the rest, mirroring does not
    torch.manual_seed(0)
    x, cond = torch.full((1, 4, 8, 8), 0.7), torch.randn(1, 6)
    for padding, flat in (("zeros", False), ("reflect", True)):
        block = UpBlock(4, 5, cond_dim=6, upsample="bilinear", padding=padding).eval()
        out = block(x, cond)
        assert out.shape == (1, 5, 16, 16)
        assert torch.allclose(out, out[:, :, 8:9, 8:9].expand_as(out), atol=1e-6) == flat
    c, _ = tiny_pair(64)
    s = c.level_shapes()
    g = PyramidGenerator(image_size=64, num_classes=5, z_dim=8, embed_dim=4, level_channels=(4, 6, 8, 10, 12),
                         fc_dims=(s["fc7"][0], s["fc8"][0]), hidden_dim=16, gen_channels=(8, 8, 8, 8, 8, 8),
                         upsample="bilinear", padding="reflect").eval()
    assert g.config["padding"] == "reflect"
    feats, masks = c.features(torch.randn(2, 3, 64, 64)), level_masks(s, {"conv1": None}, 2)
    z, y = torch.randn(2, 8), torch.tensor([1, 3])
    save_checkpoint(tmp_path / "g", g, g.config)
    assert torch.equal(load_checkpoint(tmp_path / "g")(z, feats, masks, y), g(z, feats, masks, y))
    with pytest.raises(ValueError, match="padding"):
        PyramidGenerator(padding="circular")
    with pytest.raises(ValueError, match="image_size must be at least 64"):
        PyramidGenerator(image_size=32, padding="reflect")
