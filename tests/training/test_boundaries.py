import json

import numpy as np
import pytest
import torch

from random_bundles import make_random_higan_bundle
from semgen.pipelines.higan import TRANSFERS, HiganPipeline, load_boundaries, transfer_name
from training.attributes import AttributeOptions, predictor_r2, train_attributes
from training.boundaries import (BoundaryOptions, attribute_gradients, fit_linear_svm,
                                 gradient_direction, split_top_bottom, train_boundaries)


def test_linear_svm_separates_separable_data_with_the_normal_towards_the_positives():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(16)
    truth /= np.linalg.norm(truth)
    x = rng.standard_normal((600, 16)) * rng.uniform(0.5, 3, 16) + 2.0  # unequal scales and an offset
    s = x @ truth - np.median(x @ truth)
    keep = np.abs(s) > 0.5  # a gap between the classes: linearly separable
    x, y = x[keep], np.sign(s[keep])
    weights, bias = fit_linear_svm(x, y)
    assert (np.sign(x @ weights + bias) == y).mean() == 1.0
    assert weights @ truth / np.linalg.norm(weights) > 0.9  # the +1 side is where the normal points
    assert fit_linear_svm(x, -y)[0] @ truth < 0
    again = fit_linear_svm(x, y)
    assert np.array_equal(again[0], weights) and again[1] == bias  # deterministic


def test_top_and_bottom_split_is_70_30_with_the_right_labels():
    scores = np.arange(100.0)
    (tr, ytr), (va, yva) = split_top_bottom(scores, top=0.2, val=0.3, seed=0)
    assert len(tr) == 28 and len(va) == 12
    idx, labels = np.concatenate([tr, va]), np.concatenate([ytr, yva])
    assert sorted(idx[labels > 0]) == list(range(80, 100)) and sorted(idx[labels < 0]) == list(range(20))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_random_higan_bundle(tmp_path_factory.mktemp("higan"))


def test_train_boundaries_writes_unit_normals_with_metadata(bundle, tmp_path):
    out = train_boundaries(BoundaryOptions(models=str(bundle), out=str(tmp_path / "b"), run_dir=str(tmp_path / "run"),
                                           n=200, rescore_n=8), progress=lambda msg: None)
    boundaries = load_boundaries(out)
    names = list(boundaries)
    assert names[:16] == list(HiganPipeline.from_dir(bundle).score_names)  # 8 attributes + 8 categories
    assert set(names[16:]) <= {transfer_name(a, b) for a, b in TRANSFERS}  # pairs seen in the samples
    for b in boundaries.values():
        assert abs(np.linalg.norm(b.normal) - 1) < 1e-5 and b.scale > 0
        assert 0 <= b.val_acc <= 1 and b.default_layers and all(0 <= l < 8 for l in b.default_layers)
    meta = json.loads((out / "boundaries.json").read_text())
    assert meta["boundaries"][0]["space"] == "w" and meta["training"]["n"] == 200
    assert (tmp_path / "run" / "scores_200.npz").exists()  # a rerun reuses the scored samples


def test_attribute_predictor_trains_resumes_and_reports_r2(tmp_path):
    opt = AttributeOptions(out=str(tmp_path / "attr"), run_dir=str(tmp_path / "run"), image_size=32, steps=2,
                           batch_size=4, save_every=1, stats_n=40)
    train_attributes(opt)
    from semgen.checkpoints import load_checkpoint

    model = load_checkpoint(tmp_path / "attr")
    assert model.attribute_names[0] == "horizon" and len(model.attribute_names) == 8
    r2 = predictor_r2(model, n=20)
    assert set(r2) == set(model.attribute_names) and all(np.isfinite(v) for v in r2.values())
    train_attributes(AttributeOptions(**{**opt.__dict__, "steps": 3}))  # resumes at step 2
    assert json.loads((tmp_path / "attr" / "config.json").read_text())["step"] == 3


def test_gradient_direction_is_orthogonal_to_the_other_attributes_moves_on_its_layers():
    rng = np.random.default_rng(1)
    gradients = rng.standard_normal((4, 6, 10))  # [attrs, layers, w_dim]
    d = gradient_direction(gradients, 1, (2, 4))
    move = gradients[:, [2, 4]].sum(1)
    assert abs(np.linalg.norm(d) - 1) < 1e-6
    assert np.abs(np.delete(move, 1, 0) @ d).max() < 1e-5  # to first order the others do not move
    assert move[1] @ d > 0  # and its own score rises
    with pytest.raises(ValueError, match="nothing is left"):
        gradient_direction(np.repeat(gradients[:1], 4, 0), 0, (2,))


def test_attribute_gradients_match_finite_differences(bundle):
    pipe = HiganPipeline.from_dir(bundle)
    ws = pipe.gan.latents_from_seeds(np.arange(6)).double()
    pipe.generator.double(), pipe.predictor.double()
    gradients = attribute_gradients(pipe, ws, batch_size=4)  # two chunks
    v = torch.from_numpy(np.random.default_rng(2).standard_normal(pipe.w_dim))
    eps, layer = 1e-6, 3  # small enough to stay clear of the ReLU and max-pool kinks
    plus, minus = ws.clone(), ws.clone()
    plus[:, layer] += eps * v
    minus[:, layer] -= eps * v
    with torch.no_grad():
        numeric = (pipe.predictor(pipe.generator.synthesis(plus, noise_mode="const")) -
                   pipe.predictor(pipe.generator.synthesis(minus, noise_mode="const"))).mean(0) / (2 * eps)
    assert np.allclose(gradients[:, layer] @ v.numpy(), numeric.numpy(), rtol=1e-3, atol=1e-9)


def test_a_gradient_direction_moves_its_attribute_alone_to_first_order(bundle):
    pipe = HiganPipeline.from_dir(bundle)
    ws = pipe.gan.latents_from_seeds(np.arange(16)).double()
    pipe.generator.double(), pipe.predictor.double()  # float64: the random predictor's gradients are tiny
    gradients = attribute_gradients(pipe, ws)
    for attribute, layers in ((0, (0, 1)), (6, (4, 5, 6))):
        d = torch.from_numpy(gradient_direction(gradients, attribute, layers)).double()
        moved = []
        for sign in (1, -1):
            w = ws.clone()
            w[:, list(layers)] += sign * 1e-7 * d  # small enough to stay clear of the ReLU and max-pool kinks
            with torch.no_grad():
                moved.append(pipe.predictor(pipe.generator.synthesis(w, noise_mode="const")).mean(0).numpy())
        change = moved[0] - moved[1]
        assert change[attribute] > 0 and np.abs(np.delete(change, attribute)).max() < 0.01 * change[attribute]


def test_train_boundaries_with_gradient_directions_gives_them_to_the_attributes_only(bundle, tmp_path):
    opt = BoundaryOptions(models=str(bundle), out=str(tmp_path / "b"), run_dir=str(tmp_path / "run"), n=200,
                          rescore_n=8, directions="gradient", gradient_n=16)
    out = train_boundaries(opt, progress=lambda msg: None)
    boundaries = load_boundaries(out)
    attrs = HiganPipeline.from_dir(bundle).predictor.attribute_names
    assert {n for n, b in boundaries.items() if b.method == "gradient"} == set(attrs)
    assert all(b.method == "svm" for n, b in boundaries.items() if n not in attrs) and len(boundaries) > len(attrs)
    for b in boundaries.values():
        assert abs(np.linalg.norm(b.normal) - 1) < 1e-5 and b.scale > 0 and b.default_layers
    assert json.loads((out / "boundaries.json").read_text())["training"]["directions"] == "gradient"
    with pytest.raises(ValueError, match="directions"):
        train_boundaries(BoundaryOptions(**{**opt.__dict__, "directions": "pca"}))
