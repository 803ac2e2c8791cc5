import numpy as np
import pytest
import torch

from random_bundles import make_random_semantics_bundle
from semgen.networks.heads import LinearSemanticExtractor
from semgen.pipelines.semantics import FewShotSchedule, SemanticsPipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return SemanticsPipeline.from_dir(make_random_semantics_bundle(tmp_path_factory.mktemp("bundle")))


def test_sample_is_deterministic_and_latents_round_trip(pipe):
    a = pipe.sample(seeds=[3, 4], predictor="lse")
    b = pipe.sample(seeds=[3, 4], predictor="lse")
    assert a.images.shape == (2, 16, 16, 3) and a.latents.shape == (2, *pipe.latent_shape)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    again = pipe.sample(latents=a.latents, predictor="lse")
    assert np.array_equal(again.images, a.images) and np.array_equal(again.masks, a.masks)
    w_only = pipe.sample(latents=a.latents[:, 0])  # a w is broadcast to every layer
    assert np.array_equal(w_only.images, a.images)
    assert not np.array_equal(a.images[0], a.images[1])


def test_bad_inputs_name_the_field(pipe):
    with pytest.raises(ValueError, match="^latents: shape"):
        pipe.sample(latents=np.zeros((1, 5)))
    with pytest.raises(ValueError, match="^seeds: give either"):
        pipe.sample(seeds=[1], latents=np.zeros((1, 8)))
    with pytest.raises(ValueError, match="^target_mask: class index 11"):
        pipe.sample_conditional(np.full((16, 16), 11), "lse", 1, seed=0, n_init=1, iterations=1)
    with pytest.raises(ValueError, match="^target_mask: must be 16×16"):
        pipe.edit(pipe.sample(seeds=[1]).latents, np.zeros((8, 8), np.uint8), "lse", iterations=1)
    with pytest.raises(KeyError, match="no head named 'nope'"):
        pipe.segment(pipe.sample(seeds=[1]).latents, "nope")


def test_fit_head_recovers_a_linear_teacher_from_a_few_shots(pipe, tmp_path):
    """Masks drawn by a linear head are linearly separable in the features: a 4-shot LSE fitted
    on them must agree with the teacher on fresh samples far above chance (1/3)."""
    torch.manual_seed(5)
    teacher = LinearSemanticExtractor(pipe.generator.layer_channels(), 3, ("a", "b", "c"))
    pipe.add_head("teacher", teacher)
    shots = pipe.sample(seeds=range(4), predictor="teacher")
    head = pipe.fit_head(shots.latents, shots.masks, ("a", "b", "c"), iterations=300, schedule=FewShotSchedule(lr=0.02))
    pipe.save_head("student", head, tmp_path)
    fresh = pipe.sample(seeds=range(100, 120), predictor="teacher")
    agreement = (pipe.segment(fresh.latents, "student") == fresh.masks).mean()
    assert agreement > 0.8
    assert (tmp_path / "student" / "config.json").exists()


def test_scs_moves_samples_towards_the_target(pipe):
    target = pipe.sample(seeds=[42], predictor="lse").masks[0]
    start = pipe.sample_conditional(target, "lse", num_samples=3, seed=1, n_init=4, iterations=0)
    done = pipe.sample_conditional(target, "lse", num_samples=3, seed=1, n_init=4, iterations=40, lr=0.05)
    assert done.scores.mean() > start.scores.mean()
    again = pipe.sample_conditional(target, "lse", num_samples=3, seed=1, n_init=4, iterations=40, lr=0.05)
    assert np.array_equal(done.images, again.images)  # same request, same seed -> same bytes


def test_sie_edits_towards_the_mask_and_batching_does_not_change_a_result(pipe):
    a, b = pipe.sample(seeds=[7, 8], predictor="lse").latents, pipe.sample(seeds=[9, 10], predictor="lse").masks
    before = (pipe.segment(a, "lse") == b).mean()
    batched = pipe.edit(a, b, "lse", iterations=30, lr=0.05)
    assert batched.scores.mean() > before
    alone = pipe.edit(a[1:], b[1], "lse", iterations=30, lr=0.05)
    assert np.allclose(alone.latents, batched.latents[1:], atol=1e-5)


def test_w_space_needs_a_latent_that_is_the_same_on_every_layer(pipe):
    ws = pipe.sample(seeds=[1]).latents.copy()
    ws[0, 0] += 1
    with pytest.raises(ValueError, match="^space: 'w' needs"):
        pipe.edit(ws, np.zeros((16, 16), np.uint8), "lse", iterations=1, space="w")
