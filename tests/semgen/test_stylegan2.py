"""The StyleGAN2 generator (semgen/networks/stylegan2.py) against NVlabs' own outputs, and read from their pickle
(semgen/nvlabs_pickle.py: generator_from_pickle)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.networks.stylegan2 import StyleGAN2Generator
from semgen.nvlabs_pickle import generator_config, generator_from_object, generator_from_pickle, read_network_pickle

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan2"


@pytest.fixture(scope="module")
def imported():
    return generator_from_pickle(FIXTURES / "G64.pkl")


def test_the_nvlabs_fixture_gives_nvlabs_outputs(imported):
    model, config = imported
    ref = np.load(FIXTURES / "G64_ref.npz")
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        ws = model.mapping(z)
        img = model(z, truncation_psi=0.7, noise_mode="const")
    assert config["mapping_layers"] == 4 and model.num_ws == 10
    assert (ws - torch.from_numpy(ref["ws"])).abs().max() <= 1e-5
    assert (img - torch.from_numpy(ref["img_psi07_const"])).abs().max() <= 1e-4
    assert img.abs().max() > 1  # random weights: the reference is not a constant the test could meet by chance


@pytest.mark.parametrize("resolution", [32, 128])
def test_any_resolution_builds_with_nvlabs_widths_and_latent_count(resolution):
    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=resolution, mapping_layers=2,
                           channel_base=256, channel_max=32).eval()
    log2 = resolution.bit_length() - 1
    assert g.num_ws == 2 * log2 - 2
    assert g.synthesis.b4.const.shape == (32, 4, 4)
    assert getattr(g.synthesis, f"b{resolution}").conv1.weight.shape[0] == min(256 // resolution, 32)
    with torch.no_grad():
        assert g(torch.randn(2, 16)).shape == (2, 3, resolution, resolution)


def test_noise_modes_and_seeded_random_noise():
    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, mapping_layers=1, channel_base=64,
                           channel_max=8).eval()
    for name, p in g.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    z = torch.randn(2, 8)

    def run(mode, seed=None):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return g(z, noise_mode=mode, generator=gen)

    assert torch.equal(run("random", 1), run("random", 1)) and not torch.equal(run("random", 1), run("random", 2))
    assert torch.equal(run("const"), run("const")) and not torch.equal(run("const"), run("none"))
    with pytest.raises(ValueError, match="noise_mode: const, random or none"):
        run("sometimes")


def test_conv_clamp_bounds_every_layer_and_torgb_at_its_value():
    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=32,
                           channel_max=8, conv_clamp=0.25).eval()
    with torch.no_grad():
        image, features = g.synthesis(g.mapping(torch.randn(4, 8) * 10), return_features=True)
    assert all(f.abs().max() <= 0.25 for f in features) and max(f.abs().max() for f in features) == 0.25
    # each toRGB is clamped too, and up-sampling averages (every phase of the filter sums to 1): two blocks, 0.5
    assert image.abs().max() <= 0.5 + 1e-6


def test_class_conditional_mapping_and_truncation_cutoff():
    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=8, c_dim=3, w_dim=8, img_resolution=8, mapping_layers=2, channel_base=32,
                           channel_max=8).eval()
    g.mapping.w_avg.normal_()
    z, c = torch.randn(2, 8), torch.eye(3)[:2]
    with pytest.raises(ValueError, match="c: this mapping network is class-conditional"):
        g.mapping(z)
    with torch.no_grad():
        full, cut = g.mapping(z, c), g.mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.equal(cut[:, 2:], full[:, 2:]) and torch.allclose(cut[:, :2], g.mapping.w_avg.lerp(full[:, :2], 0.5))


def test_settings_not_reproduced_are_refused_by_name():
    obj = read_network_pickle(FIXTURES / "G64.pkl")["G_ema"]
    resnet = dataclasses.replace(obj, init_kwargs={**obj.init_kwargs, "synthesis_kwargs": {
        **obj.init_kwargs["synthesis_kwargs"], "architecture": "resnet"}})
    with pytest.raises(ValueError, match="not reproduced here: synthesis_kwargs.architecture='resnet'"):
        generator_config(resnet)
    with pytest.raises(ValueError, match="a Discriminator, not an NVlabs StyleGAN2 Generator"):
        generator_config(dataclasses.replace(obj, class_name="Discriminator"), "D")


def test_a_tensor_of_the_wrong_shape_is_named(imported):
    obj = read_network_pickle(FIXTURES / "G64.pkl")["G_ema"]
    obj.modules["mapping"].buffers["w_avg"] = torch.zeros(65)
    with pytest.raises(ValueError, match=r"G_ema does not match .*wrong shape mapping\.w_avg \(65,\) \(expected \(64,\)\)"):
        generator_from_object(obj, "G64.pkl: G_ema")
    with pytest.raises(ValueError, match="no network 'G_smooth' \\(it has G, G_ema\\)"):
        generator_from_pickle(FIXTURES / "G64.pkl", "G_smooth")


def test_an_imported_generator_round_trips_as_a_checkpoint(imported, tmp_path):
    model, config = imported
    save_checkpoint(tmp_path / "g", model, config)
    again = load_checkpoint(tmp_path / "g")
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(again(z, truncation_psi=0.7), model(z, truncation_psi=0.7))


def test_the_linear_semantics_pipeline_runs_on_a_stylegan2_generator():
    """The layer-wise interface: seeds to w+, every conv's features, a few-shot LSE head fitted on them reads back
    a segmentation of the generator's own images, and Sample segments with it."""
    from semgen.pipelines.semantics import SemanticModels
    from semgen.pipelines.semantics.fewshot import fit_head
    from semgen.pipelines.semantics.sampling import sample

    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, mapping_layers=2, channel_base=128,
                           channel_max=16)
    models = SemanticModels(g)
    assert models.latent_shape == (6, 16) and g.layer_channels() == [16, 16, 16, 8, 8] \
        and g.layer_resolutions() == [4, 8, 8, 16, 16]
    ws = models.latents_from_seeds([1, 2, 3, 4])
    images, features = models.synthesize(ws)
    assert [tuple(f.shape[1:]) for f in features] == [(16, 4, 4), (16, 8, 8), (16, 8, 8), (8, 16, 16), (8, 16, 16)]
    brightness = images.mean(dim=1)  # a segmentation of the images themselves: brighter than the image's median
    masks = (brightness > brightness.flatten(1).median(dim=1).values[:, None, None]).numpy().astype(np.uint8)
    head = fit_head(models, ws.numpy(), masks, ["dark", "bright"], seed=1, iterations=300)
    models.add_head("bright", head)
    out = sample(models, latents=ws.numpy(), predictor="bright")
    assert out.images.shape == (4, 16, 16, 3) and out.masks.shape == (4, 16, 16)
    assert np.mean(out.masks == masks) > 0.8  # a coin would agree on half
