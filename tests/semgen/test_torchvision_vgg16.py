"""Bring your own classifier: a state dict in torchvision's exact VGG16 layout loads and drives
the generator at 224 px. The layout is written out here from torchvision's `vgg16()` (no download,
no torchvision import), so a real ImageNet checkpoint saved the same way loads too."""

import numpy as np
import pytest
import torch

from semgen.checkpoints import load_classifier
from semgen.data.scenes import render_scene
from semgen.networks.pyramid import PyramidGenerator
from semgen.pipelines.pyramid import PyramidPipeline

# torchvision.models.vgg16().state_dict(): conv index -> (out, in); classifier index -> (out, in)
CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
         17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
LINEARS = {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}


def torchvision_layout() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i, (c_out, c_in) in CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * (2 / (9 * c_in)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(c_out)
    for i, (d_out, d_in) in LINEARS.items():
        state[f"classifier.{i}.weight"] = torch.randn(d_out, d_in, generator=gen) * (1 / d_in) ** 0.5
        state[f"classifier.{i}.bias"] = torch.zeros(d_out)
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    state = torchvision_layout()
    torch.save(state, path)
    return path, state


def test_torchvision_vgg16_loads_with_its_weights_and_levels(vgg_file):
    path, state = vgg_file
    vgg = load_classifier(f"torchvision-vgg16:{path}")
    assert torch.equal(vgg.convs[28].weight, state["features.28.weight"])
    assert torch.equal(vgg.fcs[6].weight, state["classifier.6.weight"])
    shapes = vgg.level_shapes()
    assert shapes == {"conv1": (64, 112, 112), "conv2": (128, 56, 56), "conv3": (256, 28, 28),
                      "conv4": (512, 14, 14), "conv5": (512, 7, 7), "fc7": (4096,), "fc8": (1000,)}
    with torch.no_grad():
        feats = vgg.features(torch.zeros(1, 3, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == shapes


def test_generation_from_a_torchvision_vgg16(vgg_file):
    path, _ = vgg_file
    vgg = load_classifier(f"torchvision-vgg16:{path}")
    torch.manual_seed(0)
    generator = PyramidGenerator.mirroring(vgg, z_dim=8, embed_dim=8, hidden_dim=16, gen_channels=(16, 8, 8, 8, 8, 8))
    pipe = PyramidPipeline(vgg, generator.eval())
    ref = render_scene(3, 240).image
    for level in ("conv1", "conv5", "fc8"):
        out = pipe.generate(ref, level, 2, seed=1)
        assert out.images.shape == (2, 224, 224, 3) and 0 <= out.class_index < 1000
    region = np.zeros((240, 240), np.float32)
    region[60:180, 60:180] = 1
    assert pipe.repaint(ref, region, "conv4", 1, seed=1).images.shape == (1, 224, 224, 3)


def test_a_state_dict_in_another_layout_is_refused_clearly(tmp_path, vgg_file):
    _, state = vgg_file
    broken = dict(state)
    del broken["features.28.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"does not match torchvision's VGG16 layout \(missing \['features.28.bias'\]"):
        load_classifier(f"torchvision-vgg16:{tmp_path / 'broken.pth'}")
    with pytest.raises(FileNotFoundError, match="classifier: no torchvision VGG16 state dict"):
        load_classifier(f"torchvision-vgg16:{tmp_path / 'missing.pth'}")


def test_a_generator_built_for_another_classifier_is_refused_at_load(vgg_file, tmp_path):
    from random_bundles import make_random_bundle

    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    with pytest.raises(ValueError, match=r"^classifier: does not match the generator.*image_size 32 \(classifier: 224\)"):
        PyramidPipeline.from_dir(bundle, classifier=f"torchvision-vgg16:{vgg_file[0]}")
