import pytest
import torch
import torch.nn.functional as F

from semgen.networks.heads import HEAD_KINDS, LinearSemanticExtractor

CHANNELS = (6, 5, 5, 4)
RES = (4, 8, 8, 16)


def features(b=2):
    torch.manual_seed(0)
    return [torch.randn(b, c, r, r) for c, r in zip(CHANNELS, RES)]


def test_lse_is_one_linear_map_of_the_upsampled_stacked_features():
    """Paper eq. 2: S = T · X with X the concatenation of every upsampled layer."""
    head = LinearSemanticExtractor(CHANNELS, 3)
    feats = features()
    X = torch.cat([F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False) for f in feats], 1)
    T = torch.cat([t.weight[:, :, 0, 0] for t in head.transforms], 1)  # [3, sum C]
    expected = torch.einsum("kc,bchw->bkhw", T, X)
    assert torch.allclose(head(feats, 16), expected, atol=1e-5)


def test_class_centers_pick_the_nearest_centre_on_the_sphere():
    feats = features()
    X = torch.cat([F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False) for f in feats], 1)
    centers = F.normalize(torch.randn(4, sum(CHANNELS)), dim=1)
    head = LinearSemanticExtractor(CHANNELS, 4).set_from_centers(centers)
    cosine = torch.einsum("kc,bchw->bkhw", centers, F.normalize(X, dim=1))
    assert torch.equal(head(feats, 16).argmax(1), cosine.argmax(1))


@pytest.mark.parametrize("kind", sorted(HEAD_KINDS))
def test_every_kind_gives_logits_at_the_output_size(kind):
    head = HEAD_KINDS[kind](CHANNELS, 3, ("a", "b", "c"))
    assert head(features(), 16).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="expects layers with channels"):
        head(features()[:-1], 16)
