import pytest
import torch
import torch.nn.functional as F

from semgen.networks.stylegan import ModulatedConv, StyleDiscriminator, StyleGenerator


def tiny(**kw):
    torch.manual_seed(0)
    return StyleGenerator(image_size=16, z_dim=8, w_dim=8, mapping_layers=2, channels=(8, 6, 4), **kw).eval()


def test_layers_features_and_latent_shape():
    G = tiny()
    assert G.num_layers == 5 and G.num_ws == 6  # 1 conv at 4 px + 2 per resolution, + the last to-RGB
    img, feats = G(torch.randn(3, 8), return_features=True)
    assert img.shape == (3, 3, 16, 16)
    assert [f.shape[1] for f in feats] == G.layer_channels() == [8, 6, 6, 4, 4]
    assert [f.shape[-1] for f in feats] == G.layer_resolutions() == [4, 8, 8, 16, 16]


def test_const_noise_is_deterministic_and_random_noise_is_not():
    G = tiny()
    with torch.no_grad():
        G.layers[-1].noise_strength.fill_(1.0)
        z = torch.randn(2, 8)
        assert torch.equal(G(z), G(z))
        assert not torch.equal(G(z, noise_mode="random"), G(z, noise_mode="random"))


def test_truncation_zero_gives_the_average_latent_for_every_z():
    G = tiny()
    with torch.no_grad():
        G.w_avg.normal_()
        a, b = G(torch.randn(1, 8), psi=0.0), G(torch.randn(1, 8), psi=0.0)
    assert torch.allclose(a, b)


def test_each_layer_reads_its_own_w():
    G = tiny()
    ws = G.broadcast(G.mapping_w(torch.randn(1, 8))).clone()
    with torch.no_grad():
        base = G.synthesis(ws, return_features=True)[1]
        ws[:, 3] += 1.0  # only layer 3 (and nothing before it) may change
        moved = G.synthesis(ws, return_features=True)[1]
    assert all(torch.equal(a, b) for a, b in zip(base[:3], moved[:3]))
    assert not torch.equal(base[3], moved[3])


def test_activation_modulation_equals_per_sample_weight_modulation():
    torch.manual_seed(1)
    conv = ModulatedConv(5, 7, 3, w_dim=4)
    x, w = torch.randn(2, 5, 6, 6), torch.randn(2, 4)
    got = conv(x, w)
    style = conv.affine(w)
    for i in range(2):  # StyleGAN2's definition: scale the weights, normalise each output filter
        weight = conv.weight * conv.scale * style[i][None, :, None, None]
        weight = weight / weight.pow(2).sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
        assert torch.allclose(got[i : i + 1], F.conv2d(x[i : i + 1], weight, padding=1), atol=1e-5)


def test_discriminator_scores_each_image():
    D = StyleDiscriminator(image_size=16, channels=(4, 8, 8))
    assert D(torch.randn(6, 3, 16, 16)).shape == (6,)
    with pytest.raises(ValueError, match="one entry per resolution"):
        StyleDiscriminator(image_size=32, channels=(4, 8, 8))


def test_a_class_conditional_generator_takes_its_class_from_z():
    torch.manual_seed(0)
    G = StyleGenerator(image_size=16, z_dim=8, w_dim=8, mapping_layers=2, channels=(8, 8, 8), num_classes=5).eval()
    assert "num_classes" not in StyleGenerator(image_size=16, channels=(8, 8, 8)).config  # unconditional: as before
    z = torch.randn(50_000, 8, generator=torch.Generator().manual_seed(1))
    shares = torch.bincount(G.class_of(z), minlength=5) / len(z)
    assert shares.min() > 0.19 and shares.max() < 0.21  # equal shares of N(0, 1)
    assert torch.equal(G.class_of(torch.tensor([[-9.0] + [0] * 7, [9.0] + [0] * 7])), torch.tensor([0, 4]))
    z = z[:4]
    plain = G.mapping_w(z)
    with torch.no_grad():
        G.class_embed[G.class_of(z)[0]] += 1.0  # only the first sample's class moves
    moved = G.mapping_w(z) != plain
    assert moved[0].any() and all(moved[i].any() == (G.class_of(z)[i] == G.class_of(z)[0]) for i in range(4))
    D = StyleDiscriminator(image_size=16, channels=(4, 8, 8), num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(D(x, torch.tensor([0, 1])), D(x, torch.tensor([2, 3])))  # the projection starts at 0
    with torch.no_grad():
        D.class_embed.normal_()
    assert not torch.equal(D(x, torch.tensor([0, 1])), D(x, torch.tensor([2, 3])))
