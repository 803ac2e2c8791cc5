"""The PyTorch port's StyleGAN2 checkpoints (semgen/stylegan2_port.py), made here from random weights in the port's
key layout (names and shapes as its Generator writes them)."""

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from semgen.networks.stylegan2 import resample_filter
from semgen.stylegan2_port import generator_from_port

STYLE, N_MLP, CH = 8, 2, 512  # the port is 512 wide up to 32 px whatever its channel multiplier


def port_channels(res: int, channel_multiplier: int = 2) -> int:
    """The port's width at a resolution: 512 up to 32 px, then 256, 128, 64, 32, 16 times the multiplier."""
    return CH if res <= 32 else min(CH, 16384 * channel_multiplier // res)


def port_checkpoint(size: int = 8, latent_avg: bool = True, channel_multiplier: int = 2) -> dict:
    """The port's g_ema at `size` (and latent_avg), random weights in its key layout."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    sd = {}
    for i in range(1, N_MLP + 1):  # style.0 is the pixel norm
        sd[f"style.{i}.weight"], sd[f"style.{i}.bias"] = r(STYLE, STYLE), r(STYLE, scale=0.1)
    sd["input.input"] = r(1, CH, 4, 4)
    kernel = resample_filter() * 4

    def styled(prefix, up, cin, cout):
        sd[f"{prefix}.conv.weight"] = r(1, cout, cin, 3, 3)
        sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"] = r(cin, STYLE), 1 + r(cin, scale=.1)
        sd[f"{prefix}.noise.weight"], sd[f"{prefix}.activate.bias"] = r(1, scale=0.3), r(cout, scale=0.1)
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = kernel

    def to_rgb(prefix, up, cin):
        sd[f"{prefix}.conv.weight"] = r(1, 3, cin, 1, 1)
        sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"] = r(cin, STYLE), 1 + r(cin, scale=.1)
        sd[f"{prefix}.bias"] = r(1, 3, 1, 1, scale=0.1)
        if up:
            sd[f"{prefix}.upsample.kernel"] = kernel

    styled("conv1", False, CH, CH), to_rgb("to_rgb1", False, CH)
    sd["noises.noise_0"] = r(1, 1, 4, 4)
    k, res = 0, 8
    while res <= size:
        cin, cout = port_channels(res // 2, channel_multiplier), port_channels(res, channel_multiplier)
        styled(f"convs.{2 * k}", True, cin, cout), styled(f"convs.{2 * k + 1}", False, cout, cout)
        to_rgb(f"to_rgbs.{k}", True, cout)
        sd[f"noises.noise_{2 * k + 1}"], sd[f"noises.noise_{2 * k + 2}"] = r(1, 1, res, res), r(1, 1, res, res)
        k, res = k + 1, res * 2
    return {"g_ema": sd, "latent_avg": r(STYLE)} if latent_avg else {"g_ema": sd}


def test_a_port_checkpoint_loads_and_maps_as_the_port_does(tmp_path):
    checkpoint = port_checkpoint(size=8)
    path = tmp_path / "g.pt"
    torch.save(checkpoint, path)
    model, config, w_avg_from = generator_from_port(path, size=8, style_dim=STYLE, n_mlp=N_MLP)
    assert (config["channel_base"], model.num_ws, w_avg_from) == (32768, 4, "latent_avg")
    sd = checkpoint["g_ema"]
    # the port's mapping, written out: pixel norm, then equalized linear layers (lr 0.01) with fused leaky ReLU
    z = torch.randn(3, STYLE, generator=torch.Generator().manual_seed(1))
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, N_MLP + 1):
        w, b = sd[f"style.{i}.weight"] * 0.01 / STYLE ** 0.5, sd[f"style.{i}.bias"] * 0.01
        x = F.leaky_relu(x @ w.t() + b, 0.2) * 2 ** 0.5
    with torch.no_grad():
        ws = model.mapping(z, truncation_psi=0.5)
        img = model(z, noise_mode="const")
    assert torch.allclose(ws[:, 0], checkpoint["latent_avg"] + 0.5 * (x - checkpoint["latent_avg"]), atol=1e-5)
    assert torch.equal(model.synthesis.b8.conv0.noise_const, sd["noises.noise_1"][0, 0])
    assert torch.equal(model.synthesis.b4.torgb.bias, sd["to_rgb1.bias"].reshape(3))
    assert img.shape == (3, 3, 8, 8) and torch.isfinite(img).all()


def test_without_latent_avg_w_avg_is_estimated_and_said(tmp_path):
    path = tmp_path / "g.pt"
    torch.save(port_checkpoint(latent_avg=False), path)
    model, _, w_avg_from = generator_from_port(path, size=8, style_dim=STYLE, n_mlp=N_MLP)
    assert w_avg_from.startswith("the mean w of 4096 z") and model.mapping.w_avg.abs().sum() > 0


def test_flags_that_do_not_fit_name_the_tensor(tmp_path):
    path = tmp_path / "g.pt"
    torch.save(port_checkpoint(size=8), path)
    with pytest.raises(ValueError, match=r"does not match the port's layout for size 8, style_dim 16.*"
                                         r"wrong shape conv1\.conv\.modulation\.weight \(512, 8\) \(expected \(512, 16\)\)"):
        generator_from_port(path, size=8, style_dim=16, n_mlp=N_MLP)
    with pytest.raises(ValueError, match=r"missing \['convs\.2\.activate\.bias'"):
        generator_from_port(path, size=16, style_dim=STYLE, n_mlp=N_MLP)
    with pytest.raises(ValueError, match="no state dict 'g' \\(it has g_ema\\)"):
        generator_from_port(path, size=8, style_dim=STYLE, n_mlp=N_MLP, network="g")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"g_ema": RunsCode(marker)}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="cannot read as a torch.save checkpoint of tensors"):
        generator_from_port(path, size=8, style_dim=STYLE, n_mlp=N_MLP)
    assert not marker.exists()


def test_every_tensor_name_maps_back_to_the_port_name_it_came_from():
    from semgen.stylegan2_port import port_key, rename

    sd = port_checkpoint(size=16)["g_ema"]
    for key, tensor in sd.items():
        renamed = list(rename({key: tensor}))
        assert [port_key(name) for name in renamed] == ([] if key.endswith("kernel") else [key])
