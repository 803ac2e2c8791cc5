"""Training loops on tiny configs: they write checkpoints, resume, and read image folders."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from random_bundles import make_random_bundle
from semgen.checkpoints import load_checkpoint, read_config, save_checkpoint
from semgen.data.loaders import ImageFolderSource
from semgen.pipelines.masks import level_masks
from semgen.networks.classifier import LEVELS
from semgen.networks.pyramid import PyramidGenerator
from semgen.pipelines.pyramid import PyramidPipeline
from training.average import AverageOptions, average_checkpoints
from training.classifier import ClassifierOptions, train_classifier
from training.pyramid import (PyramidOptions, diversity_loss, pair_weights, parse_level_weights, pixel_loss,
                              power_spectrum, spectral_loss, train_pyramid, upgraded_generator)


def write_folder(root, classes=("cats", "dogs"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
            img[..., c] = 255  # classes differ in colour
            Image.fromarray(img).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not an image folder entry")
    return root


def test_image_folder_source(tmp_path):
    src = ImageFolderSource(write_folder(tmp_path / "data"), size=32)
    assert src.class_names == ("cats", "dogs") and len(src.images) == 6
    x, y = src.batch(0, 8)
    assert x.shape == (8, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, src.batch(0, 8)[0])  # a step always gives the same batch


def test_classifier_trains_on_folder_and_resumes(tmp_path):
    data = write_folder(tmp_path / "data")
    opt = ClassifierOptions(out=str(tmp_path / "ckpt"), run_dir=str(tmp_path / "run"), data=str(data), image_size=32,
                            steps=2, batch_size=4, save_every=1, threads=1)
    train_classifier(opt)
    assert read_config(tmp_path / "ckpt")["step"] == 2
    model = load_checkpoint(tmp_path / "ckpt")
    assert model.class_names == ("cats", "dogs")
    opt.steps = 3
    train_classifier(opt)  # resumes from step 2, runs one more
    assert read_config(tmp_path / "ckpt")["step"] == 3
    assert json.loads((tmp_path / "run" / "training_options.json").read_text())["steps"] == 3


def test_pyramid_trains_and_resumes(tmp_path):
    make_random_bundle(tmp_path / "bundle", image_size=32)
    opt = PyramidOptions(classifier=str(tmp_path / "bundle" / "classifier"), out=str(tmp_path / "g"),
                         run_dir=str(tmp_path / "run"), steps=2, batch_size=4, save_every=1, sample_every=2, threads=1)
    train_pyramid(opt)
    g = load_checkpoint(tmp_path / "g")
    assert read_config(tmp_path / "g")["step"] == 2 and g.image_size == 32
    assert (tmp_path / "run" / "samples" / "000002.png").exists()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    opt.steps = 3
    train_pyramid(opt)
    after = load_checkpoint(tmp_path / "g").state_dict()
    assert read_config(tmp_path / "g")["step"] == 3
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the EMA generator moved


@pytest.mark.parametrize("term", ["rec_deeper", "pixel_weight"])
def test_pyramid_optional_term_moves_the_generator(tmp_path, term):
    make_random_bundle(tmp_path / "bundle", image_size=32)
    weights = {}
    for value in (0.0, 1.0):
        name = f"g{value}"
        train_pyramid(PyramidOptions(classifier=str(tmp_path / "bundle" / "classifier"), out=str(tmp_path / name),
                                     run_dir=str(tmp_path / f"run{value}"), steps=1, batch_size=8,
                                     sample_every=10, threads=1, **{term: value}))
        weights[value] = load_checkpoint(tmp_path / name).state_dict()
    # same seed, same batch: only the optional term differs, and it moves the generator
    assert any(not torch.equal(weights[0.0][k], weights[1.0][k]) for k in weights[0.0])


def test_pyramid_spectral_term_moves_the_generator_and_resumes_as_if_never_stopped(tmp_path):
    make_random_bundle(tmp_path / "bundle", image_size=32)
    base = dict(classifier=str(tmp_path / "bundle" / "classifier"), batch_size=4, save_every=1, sample_every=10,
                threads=1, spectral_by_level=True)

    def run(name, weight, steps):
        train_pyramid(PyramidOptions(**base, out=str(tmp_path / name), run_dir=str(tmp_path / f"run-{name}"),
                                     spectral_weight=weight, steps=steps))
        return load_checkpoint(tmp_path / name).state_dict()

    plain, spectral = run("plain", 0.0, 3), run("spectral", 1.0, 3)
    assert any(not torch.equal(plain[k], spectral[k]) for k in plain)  # the term moves the generator
    run("resumed", 1.0, 2)
    resumed = run("resumed", 1.0, 3)  # the references' spectrum of steps 0-1 is replayed, not forgotten
    assert all(torch.equal(resumed[k], spectral[k]) for k in spectral)


def test_pyramid_trains_on_an_image_folder(tmp_path):
    data = write_folder(tmp_path / "data")
    train_classifier(ClassifierOptions(out=str(tmp_path / "models" / "classifier"), run_dir=str(tmp_path / "run_c"),
                                       data=str(data), image_size=32, steps=2, batch_size=4, threads=1))
    train_pyramid(PyramidOptions(classifier=str(tmp_path / "models" / "classifier"), data=str(data),
                                 out=str(tmp_path / "models" / "pyramid"), run_dir=str(tmp_path / "run_p"),
                                 steps=2, batch_size=4, threads=1))
    pipe = PyramidPipeline.from_dir(tmp_path / "models")
    assert pipe.class_names == ("cats", "dogs")
    reply = pipe.generate(np.asarray(Image.open(data / "dogs" / "0.png")), "conv3", 2, seed=0, class_index=1)
    assert reply.images.shape == (2, 32, 32, 3) and reply.class_index == 1


def test_pyramid_refuses_a_folder_whose_classes_the_classifier_lacks(tmp_path):
    make_random_bundle(tmp_path / "bundle", image_size=32)  # 8 scene categories
    opt = PyramidOptions(classifier=str(tmp_path / "bundle" / "classifier"), data=str(write_folder(tmp_path / "d")),
                         out=str(tmp_path / "g"), run_dir=str(tmp_path / "run"), steps=1, batch_size=4, threads=1)
    with pytest.raises(ValueError, match="data has 2 classes, the classifier 8"):
        train_pyramid(opt)


def test_warm_start_keeps_the_generator_through_the_d_warmup(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    start = load_checkpoint(bundle / "pyramid").state_dict()
    opt = PyramidOptions(classifier=str(bundle / "classifier"), init_from=str(bundle / "pyramid"), d_warmup=1,
                         out=str(tmp_path / "g"), run_dir=str(tmp_path / "run"), steps=1, batch_size=4, threads=1)
    train_pyramid(opt)  # one step of D only: the generator is the warm start (upgraded to version 2), saved
    after_warmup = load_checkpoint(tmp_path / "g").state_dict()
    opt.steps = 2
    train_pyramid(opt)  # resumes; now G learns
    trained = load_checkpoint(tmp_path / "g").state_dict()
    assert read_config(tmp_path / "g")["training"]["init_from"] == str(bundle / "pyramid")
    assert read_config(tmp_path / "g")["config"]["upsample"] == "bilinear"
    assert all(torch.equal(start[k], after_warmup[k]) for k in start if "running" not in k and "batches" not in k)
    assert any(not torch.equal(start[k], trained[k]) for k in start)


def test_a_version_1_generator_upgrades_with_every_weight(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    old, classifier = load_checkpoint(bundle / "pyramid"), load_checkpoint(bundle / "classifier")
    feats = classifier.features(torch.randn(2, 3, 32, 32))
    masks = level_masks(classifier.level_shapes(), {"conv3": None}, 2)
    z, y = torch.randn(2, 8), torch.tensor([1, 4])
    with torch.no_grad():
        before = old(z, feats, masks, y)
        # the noise scales start at 0: with nearest upsampling kept, the upgraded G draws the same image
        same = upgraded_generator(str(bundle / "pyramid"), "nearest", True).eval()
        assert same.config["noise"] is True and torch.equal(same(z, feats, masks, y), before)
        smooth = upgraded_generator(str(bundle / "pyramid"), "bilinear", True).eval()
        assert not torch.equal(smooth(z, feats, masks, y), before)
    v2 = make_random_bundle(tmp_path / "v2", image_size=32, upsample="bilinear", noise=True)
    with pytest.raises(ValueError, match="init_from: .* has per-block noise"):
        upgraded_generator(str(v2 / "pyramid"), "bilinear", False)
    v2 = make_random_bundle(tmp_path / "v2-64", image_size=64, upsample="bilinear", noise=True)
    mirrored = upgraded_generator(str(v2 / "pyramid"), "bilinear", True, "reflect")
    assert mirrored.config["padding"] == "reflect"
    old = load_checkpoint(v2 / "pyramid").state_dict()
    assert all(torch.equal(old[k], v) for k, v in mirrored.state_dict().items())  # every weight carried over


def test_diversity_counts_only_the_chosen_pairs():
    z = torch.tensor([[0.0], [0.0], [1.0], [1.0]])  # pairs (0, 2) and (1, 3), both |dz| = 1
    images = torch.tensor([[0.0], [0.0], [1.0], [0.0]])  # pair 0 differs by 1, pair 1 not at all
    every = diversity_loss(z, images, eps=1.0)
    assert every.item() == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert diversity_loss(z, images, 1.0, pairs=torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    assert diversity_loss(z, images, 1.0, pairs=torch.tensor([0.0, 1.0])).item() == pytest.approx(1.0)
    assert diversity_loss(z, images, 1.0, pairs=torch.zeros(2)).item() == 0.0  # no deep pair in the batch


def test_a_level_weight_multiplies_its_pairs_pull_and_div_from_still_drops_shallow_pairs():
    z = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    images = torch.tensor([[0.0], [0.0], [1.0], [0.0]])  # pair ratios: 1/2 and 1/1 (eps 1)
    fc8, conv1 = LEVELS.index("fc8"), LEVELS.index("conv1")
    weights = pair_weights(torch.tensor([fc8, fc8]), "conv4", parse_level_weights("fc8=2"))
    assert weights.tolist() == [2.0, 2.0]
    assert diversity_loss(z, images, 1.0, weights).item() == pytest.approx(2 * (1 / 2 + 1) / 2)  # doubled, not renormalised
    weights = pair_weights(torch.tensor([conv1, fc8]), "conv4", parse_level_weights("fc8=2"))
    assert weights.tolist() == [0.0, 2.0]  # conv1 is below div_from
    assert diversity_loss(z, images, 1.0, weights).item() == pytest.approx(2.0)
    assert pair_weights(torch.tensor([conv1, fc8]), "", {}) is None  # every pair once, as the paper
    for bad in ("fc9=2", "fc8=x", "fc8=-1"):
        with pytest.raises(ValueError, match="div_level_weights"):
            parse_level_weights(bad)


def test_pixel_loss_counts_only_the_pixels_under_the_conv1_mask():
    real = torch.zeros(2, 3, 8, 8)
    fake = real.clone()
    fake[:, :, :4] = 1.0  # the top half is wrong by 1 in every channel
    mask = torch.zeros(2, 1, 4, 4)  # conv1's grid: half the image's side
    assert pixel_loss(real, fake, mask).item() == 0.0  # conv1 passed nowhere: nothing to match
    mask[:, :, 2:] = 1.0  # passed on the bottom half, which is right
    assert pixel_loss(real, fake, mask).item() == 0.0
    mask[:, :, 1] = 1.0  # and on one row of cells in the wrong half: 2 of 6 image rows wrong
    assert pixel_loss(real, fake, mask).item() == pytest.approx(2 / 6)


def test_pyramid_names_a_bad_div_from(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    opt = PyramidOptions(classifier=str(bundle / "classifier"), div_from="conv9", out=str(tmp_path / "g"),
                         run_dir=str(tmp_path / "run"), steps=1, batch_size=4, threads=1)
    with pytest.raises(ValueError, match="div_from must be one of conv1"):
        train_pyramid(opt)


def smooth_images_and_a_checkerboard() -> tuple[torch.Tensor, torch.Tensor]:
    """[16, 3, 32, 32] images with little high frequency, and a ±1 board of period 2 on both axes [32, 32]."""
    torch.manual_seed(0)
    smooth = F.avg_pool2d(torch.rand(16, 3, 36, 36) * 2 - 1, 5, stride=1)
    return smooth, ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2 - 1).float()


def test_spectral_loss_is_zero_on_the_real_spectrum_and_pulls_the_checkerboard_bin_towards_it():
    smooth, board = smooth_images_and_a_checkerboard()
    real = power_spectrum(smooth[:8])
    assert spectral_loss(smooth[:8], real).item() < 1e-6
    nyquist = lambda x: power_spectrum(x)[16, 16].item()  # the checkerboard's frequency bin
    others = smooth[8:]
    flat = others - (others * board).mean((2, 3), keepdim=True) * board  # their checkerboard component taken out
    for start, excess in ((others + 3e-3 * board, True), (flat + 1e-4 * board, False)):
        fake = start.clone().requires_grad_(True)
        assert (nyquist(fake) > real[16, 16].item()) == excess
        spectral_loss(fake, real).backward()
        # the other bins' gradients are orthogonal to the board: this is the checkerboard bin's own pull
        assert ((fake.grad * board).sum().item() > 0) == excess
        with torch.no_grad():
            stepped = fake - 1e-3 * fake.grad / fake.grad.abs().max()
        assert abs(nyquist(stepped) - real[16, 16].item()) < abs(nyquist(fake) - real[16, 16].item())


def test_spectral_loss_by_level_sees_peaks_that_a_mixed_batch_averages_away():
    smooth, board = smooth_images_and_a_checkerboard()
    real = power_spectrum(smooth[:8])
    flat = smooth[8:] - (smooth[8:] * board).mean((2, 3), keepdim=True) * board  # no checkerboard at all
    # half the batch with a checkerboard, half with none: together about as much as the real images have
    amplitude = (real[16, 16] * 2).sqrt() / 32**2
    batch = torch.cat([flat[:4] + amplitude * board, flat[4:]])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert spectral_loss(batch, real, torch.zeros(8, dtype=torch.long)) == spectral_loss(batch, real)
    # smaller groups have noisier spectra everywhere; the board adds to the grouped loss only at its own bin
    by_level_excess = lambda images: (spectral_loss(images, real, groups) - spectral_loss(images, real)).item()
    assert by_level_excess(batch) > by_level_excess(flat) + 0.003


def test_spectral_loss_against_own_references_is_zero_for_exact_reconstructions(tmp_path):
    smooth, board = smooth_images_and_a_checkerboard()
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    references = torch.cat([smooth[:4], smooth[8:12] + 0.05 * board])  # group 1's references are textured
    real = power_spectrum(smooth)  # every reference seen: little texture on average
    own = {0: power_spectrum(references[:4]), 1: power_spectrum(references[4:])}
    assert spectral_loss(references, real, groups, own).item() < 1e-6
    # against the mean spectrum, copying group 1's textured references exactly is penalised
    assert spectral_loss(references, real, groups).item() > 0.1
    assert spectral_loss(references, real, groups, {0: own[0]}).item() == pytest.approx(
        spectral_loss(references[4:], real).item() / 2)
    for bad in ({"spectral_by_level": False, "spectral_own_refs": "conv3"}, {"spectral_by_level": True, "spectral_own_refs": "conv9"}):
        with pytest.raises(ValueError, match="spectral_own_refs"):
            train_pyramid(PyramidOptions(spectral_weight=1.0, steps=1, run_dir=str(tmp_path), **bad))


def test_average_of_checkpoints_is_the_mean_of_their_weights(tmp_path):
    nets = []
    for i in range(2):
        torch.manual_seed(i)
        nets.append(PyramidGenerator(image_size=32, gen_channels=(16, 8, 8, 8, 8, 8)))
        save_checkpoint(tmp_path / f"g{i}", nets[-1], nets[-1].config, step=100 * (i + 1))
    average_checkpoints(AverageOptions(checkpoints=(str(tmp_path / "g0"), str(tmp_path / "g1")), out=str(tmp_path / "avg")))
    avg = load_checkpoint(tmp_path / "avg").state_dict()
    first, second = nets[0].state_dict(), nets[1].state_dict()
    assert torch.allclose(avg["to_rgb.weight"], (first["to_rgb.weight"] + second["to_rgb.weight"]) / 2)
    assert not torch.equal(first["to_rgb.weight"], second["to_rgb.weight"])
    assert read_config(tmp_path / "avg")["step"] == 200

    other = PyramidGenerator(image_size=32)  # another config: not the same network
    save_checkpoint(tmp_path / "other", other, other.config)
    with pytest.raises(ValueError, match="checkpoints: .*other is not the same network"):
        average_checkpoints(AverageOptions(checkpoints=(str(tmp_path / "g0"), str(tmp_path / "other")),
                                           out=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="checkpoints: give two or more"):
        average_checkpoints(AverageOptions(checkpoints=(str(tmp_path / "g0"),), out=str(tmp_path / "bad")))


def test_train_only_one_layer_leaves_every_other_weight_and_statistic_as_it_was(tmp_path):
    make_random_bundle(tmp_path / "bundle", image_size=32)
    bundle = tmp_path / "bundle"
    train_pyramid(PyramidOptions(classifier=str(bundle / "classifier"), init_from=str(bundle / "pyramid"),
                                 out=str(tmp_path / "g"), run_dir=str(tmp_path / "run"), steps=3, batch_size=4,
                                 sample_every=10, threads=1, levels="fc8", train_only="from_fc8", lr=1e-2))
    before = load_checkpoint(bundle / "pyramid").state_dict()
    after = load_checkpoint(tmp_path / "g").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"from_fc8.weight"}
    with pytest.raises(ValueError, match="train_only: no parameter .* starts with nothing_here"):
        train_pyramid(PyramidOptions(classifier=str(bundle / "classifier"), out=str(tmp_path / "g2"),
                                     run_dir=str(tmp_path / "run2"), steps=1, batch_size=4, train_only="nothing_here"))
    with pytest.raises(ValueError, match="levels: fc9 not among"):
        train_pyramid(PyramidOptions(classifier=str(bundle / "classifier"), out=str(tmp_path / "g3"),
                                     run_dir=str(tmp_path / "run3"), steps=1, batch_size=4, levels="fc8,fc9"))
