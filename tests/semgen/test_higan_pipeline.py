import numpy as np
import pytest
import torch

from random_bundles import make_random_higan_bundle
from semgen.pipelines.higan import Edit, HiganPipeline, default_layers, load_boundaries, save_boundaries


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return HiganPipeline.from_dir(make_random_higan_bundle(tmp_path_factory.mktemp("higan")))


def test_an_edit_moves_only_its_layers_by_strength_times_scale_along_the_normal(pipe):
    ws = pipe.gan.latents_from_seeds([1, 2])
    b = pipe.boundary("horizon")
    moved = pipe.edit_latents(ws, [Edit("horizon", 2.0, (1, 3))])
    delta = (moved - ws).numpy()
    assert np.allclose(delta[:, [1, 3]], 2.0 * b.scale * b.normal, atol=1e-6)
    assert np.all(delta[:, [0, 2, 4, 5, 6, 7]] == 0)
    default = pipe.edit_latents(ws, [Edit("horizon", 1.0)]) - ws  # no layers: the boundary's defaults
    assert [i for i in range(pipe.num_ws) if default[:, i].abs().sum() > 0] == list(b.default_layers)


def test_conditional_direction_is_orthogonal_to_the_conditions(pipe):
    d = pipe.direction("horizon", condition_on=("warmth", "tree_count"))
    assert abs(float(d.norm()) - 1) < 1e-5
    for other in ("warmth", "tree_count"):
        assert abs(float(d @ torch.as_tensor(pipe.boundary(other).normal))) < 1e-5
    assert float(d @ torch.as_tensor(pipe.boundary("horizon").normal)) > 0  # still the same way
    assert torch.allclose(pipe.direction("horizon", ("warmth", "warmth", "tree_count")), d, atol=1e-5)  # repeats


def test_manipulate_sweeps_deterministically_and_zero_is_the_original(pipe):
    a = pipe.manipulate([("warmth", 3.0)], seeds=[4, 5], sweep=(-1, 0, 1))
    b = pipe.manipulate([("warmth", 3.0)], seeds=[4, 5], sweep=(-1, 0, 1))
    original = pipe.gan.sample(seeds=[4, 5]).images
    assert a.images.shape == (3, 2, pipe.image_size, pipe.image_size, 3)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.images[1], original)
    assert not np.array_equal(a.images[2], original)
    assert a.scores["warmth"].shape == (3, 2) and a.latents.shape == (3, 2, pipe.num_ws, pipe.w_dim)


@pytest.mark.parametrize("edits, condition_on, error, message", [
    ([("sunshine", 1.0)], (), KeyError, "sunshine"),
    ([("horizon", 1.0)], ("nope",), KeyError, "nope"),
    ([("horizon", 1.0, (0, 99))], (), ValueError, "edits[0].layers: [99] out of range"),
    ([("horizon", float("nan"))], (), ValueError, "edits[0].strength"),
    ([("horizon", 1.0, (2, 2))], (), ValueError, "edits[0].layers: a layer is given twice"),
    ([], (), ValueError, "edits:"),
])
def test_bad_edits_name_the_field(pipe, edits, condition_on, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipe.manipulate(edits, seeds=[1], condition_on=condition_on)


def test_rescoring_is_zero_for_no_move_and_never_negative(pipe):
    ws = pipe.gan.latents_from_seeds(range(6))
    groups = [(i,) for i in range(pipe.num_ws)]
    assert np.all(pipe.rescore("horizon", ws, groups, step=0.0) == 0)
    deltas = pipe.rescore("horizon", ws, groups)
    assert deltas.shape == (pipe.num_ws,) and np.all(deltas >= 0) and deltas.sum() > 0


def test_default_layers_keep_the_strong_ones():
    assert default_layers(np.array([0.1, 1.0, 0.6, 0.2])) == (1, 2)
    assert default_layers(np.zeros(3)) == (0, 1, 2)


def test_boundaries_round_trip(pipe, tmp_path):
    save_boundaries(tmp_path, list(pipe.boundaries.values()))
    back = load_boundaries(tmp_path)
    assert list(back) == list(pipe.boundaries)
    for name, b in back.items():
        assert np.array_equal(b.normal, pipe.boundaries[name].normal)
        assert (b.level, b.scale, b.default_layers) == (pipe.boundaries[name].level, pipe.boundaries[name].scale,
                                                         pipe.boundaries[name].default_layers)
