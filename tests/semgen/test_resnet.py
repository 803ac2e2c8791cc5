"""Bring your own classifier: a state dict in torchvision's exact ResNet-50 layout loads through
'torchvision-resnet50:PATH' and computes what torchvision's network computes. The layout and the
reference forward pass are written out here from torchvision's `resnet50()` (v1.5: the stride sits
on the 3×3 conv of a bottleneck) with no torchvision import and without our module, so a real
ImageNet checkpoint saved the same way loads too."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semgen.checkpoints import load_checkpoint, load_classifier, save_checkpoint

# torchvision.models.resnet50(): layers=[3, 4, 6, 3], bottleneck widths 64..512, expansion 4
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
LEVELS = ("conv2_3", "conv3_4", "conv4_6", "conv5_3")  # outputs of layer1..layer4
NUM_PARAMETERS = 25_557_032  # sum(p.numel() for p in resnet50().parameters())
NUM_ENTRIES = 320  # len(resnet50().state_dict()), num_batches_tracked included


def torchvision_layout(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}

    def conv(key, c_out, c_in, k):
        state[f"{key}.weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * (2 / (c_in * k * k)) ** 0.5

    def bn(key, c, gain=1.0):
        state[f"{key}.weight"] = gain * (1 + 0.1 * torch.randn(c, generator=gen))
        state[f"{key}.bias"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=gen)
        state[f"{key}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    c_in = 64
    for i, (blocks, width) in enumerate(STAGES, 1):
        for b in range(blocks):
            block = f"layer{i}.{b}"
            conv(f"{block}.conv1", width, c_in, 1)
            bn(f"{block}.bn1", width)
            conv(f"{block}.conv2", width, width, 3)
            bn(f"{block}.bn2", width)
            conv(f"{block}.conv3", 4 * width, width, 1)
            bn(f"{block}.bn3", 4 * width, gain=0.3)  # keeps the residual sums of random weights tame
            if b == 0:  # channel change (and stride in layer2..4): projection shortcut
                conv(f"{block}.downsample.0", 4 * width, c_in, 1)
                bn(f"{block}.downsample.1", 4 * width)
            c_in = 4 * width
    state["fc.weight"] = torch.randn(num_classes, c_in, generator=gen) * (1 / c_in) ** 0.5
    state["fc.bias"] = 0.1 * torch.randn(num_classes, generator=gen)
    return state


def reference_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's resnet50 forward pass from the raw tensors; x [B, 3, S, S] in [-1, 1]."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def bn(h, key):
        return F.batch_norm(h, state[f"{key}.running_mean"], state[f"{key}.running_var"],
                            state[f"{key}.weight"], state[f"{key}.bias"], training=False, eps=1e-5)

    h = ((x + 1) / 2 - mean) / std
    h = F.relu(bn(F.conv2d(h, state["conv1.weight"], stride=2, padding=3), "bn1"))
    feats = {"conv1_1": h}
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for i, ((blocks, _), level) in enumerate(zip(STAGES, LEVELS), 1):
        for b in range(blocks):
            block, stride = f"layer{i}.{b}", 2 if i > 1 and b == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[f"{block}.conv1.weight"]), f"{block}.bn1"))
            out = F.relu(bn(F.conv2d(out, state[f"{block}.conv2.weight"], stride=stride, padding=1), f"{block}.bn2"))
            out = bn(F.conv2d(out, state[f"{block}.conv3.weight"]), f"{block}.bn3")
            if b == 0:
                h = bn(F.conv2d(h, state[f"{block}.downsample.0.weight"], stride=stride), f"{block}.downsample.1")
            h = F.relu(out + h)
        feats[level] = h
    feats["fc8"] = F.linear(h.mean((2, 3)), state["fc.weight"], state["fc.bias"])
    return feats


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet") / "resnet50.pth"
    state = torchvision_layout()
    torch.save(state, path)
    return path, state


def test_the_layout_is_torchvisions(resnet_file):
    _, state = resnet_file
    assert len(state) == NUM_ENTRIES
    params = sum(v.numel() for k, v in state.items() if not k.rsplit(".", 1)[1].startswith(("running_", "num_")))
    assert params == NUM_PARAMETERS


def test_torchvision_resnet50_loads_and_matches_the_reference(resnet_file):
    path, state = resnet_file
    net = load_classifier(f"torchvision-resnet50:{path}")
    assert not net.training
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMETERS
    own = net.state_dict()
    assert own.keys() == state.keys() and all(torch.equal(own[k], v) for k, v in state.items())
    shapes = {"conv1_1": (64, 112, 112), "conv2_3": (256, 56, 56), "conv3_4": (512, 28, 28),
              "conv4_6": (1024, 14, 14), "conv5_3": (2048, 7, 7), "fc8": (1000,)}
    assert net.level_shapes() == shapes
    assert net.spatial_layers == tuple(shapes)[:5] and net.match_layers == tuple(shapes)[:4]
    assert net.gradcam_layer == "conv5_3"

    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        feats, logits = net.features(x), net(x)
        expected = reference_features(state, x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (2, *s) for k, s in shapes.items()}
    torch.testing.assert_close(feats["conv1_1"], expected["conv1_1"], rtol=1e-5, atol=1e-5)
    for name in (*LEVELS, "fc8"):
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(feats[name], expected[name], rtol=1e-4, atol=1e-4 * scale, msg=name)
    torch.testing.assert_close(logits, feats["fc8"])


def test_another_head_size_and_a_checkpoint_round_trip(tmp_path):
    state = torchvision_layout(num_classes=5)
    torch.save(state, tmp_path / "r50-5.pth")
    net = load_classifier(f"torchvision-resnet50:{tmp_path / 'r50-5.pth'}")
    assert net.num_classes == 5 and net.level_shapes()["fc8"] == (5,)
    save_checkpoint(tmp_path / "ckpt", net, net.config)
    again = load_checkpoint(tmp_path / "ckpt")
    assert type(again).__name__ == "TorchvisionResNet50" and torch.equal(again.fc.weight, state["fc.weight"])


def test_a_state_dict_in_another_layout_is_refused_clearly(tmp_path, resnet_file):
    path, state = resnet_file

    def load(name, content):
        torch.save(content, tmp_path / name)
        return load_classifier(f"torchvision-resnet50:{tmp_path / name}")

    with pytest.raises(FileNotFoundError, match="classifier: no torchvision ResNet-50 state dict"):
        load_classifier(f"torchvision-resnet50:{tmp_path / 'missing.pth'}")
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.6.weight": torch.zeros(1000, 4096)}
    with pytest.raises(ValueError, match=r"is not a torchvision ResNet-50 state dict \(no fc.weight\)"):
        load("vgg.pth", vgg)
    broken = dict(state)
    del broken["layer3.5.bn2.running_var"]
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"does not match torchvision's ResNet-50 layout "
                                         r"\(missing \['layer3.5.bn2.running_var'\], "
                                         r"unexpected \['layer5.0.conv1.weight'\]\)"):
        load("keys.pth", broken)
    resized = dict(state, **{"layer2.0.conv2.weight": torch.zeros(128, 128, 1, 1)})
    with pytest.raises(ValueError, match=r"does not match torchvision's ResNet-50 layout: wrong shape "
                                         r"layer2.0.conv2.weight \(128, 128, 1, 1\) \(expected \(128, 128, 3, 3\)\)"):
        load("shape.pth", resized)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .* as a torch.save state dict"):
        load_classifier(f"torchvision-resnet50:{tmp_path / 'text.pth'}")


def test_imagine_runs_through_a_torchvision_resnet50(resnet_file):
    from semgen.data.scenes import render_scene
    from semgen.pipelines.imagine import ImaginePipeline, Schedule

    pipe = ImaginePipeline(load_classifier(f"torchvision-resnet50:{resnet_file[0]}"))
    assert pipe.default_layers == ("conv1_1", "conv2_3", "conv3_4", "conv4_6") and pipe.gradcam_layer == "conv5_3"
    reference = render_scene(3, 224).image
    losses = []
    r = pipe.run(reference, num_variations=1, seed=0, schedule=Schedule(stage1=2, stage2=1),
                 on_step=lambda step: losses.append(step.losses))
    assert r.images.shape == (1, 224, 224, 3) and r.images.dtype == np.uint8 and 0 <= r.target_class < 1000
    assert len(losses) == 3 and all(np.isfinite(v) for step in losses for v in step.values())
    start = pipe.run(reference, num_variations=1, seed=0, schedule=Schedule(stage1=0, stage2=0)).images
    assert np.abs(r.images.astype(int) - start.astype(int)).mean() > 1  # the pixels were optimised
