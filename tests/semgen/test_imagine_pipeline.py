from dataclasses import replace

import numpy as np
import pytest
import torch

from semgen.data.scenes import render_scene
from semgen.networks.classifier import Classifier
from semgen.pipelines.imagine import Controls, ImaginePipeline, Position, Schedule

SHORT = Schedule(stage1=3, stage2=3)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    classifier = Classifier(image_size=32, num_classes=3, stage_channels=(4, 8, 8, 8, 8),
                            convs_per_stage=(1, 1, 1, 1, 1), fc_dim=16, class_names=("a", "b", "c"))
    return ImaginePipeline(classifier)


@pytest.fixture(scope="module")
def reference():
    return render_scene(5, 32).image


def run_logged(pipe, reference, **kwargs):
    steps = []
    result = pipe.run(reference, on_step=steps.append, **kwargs)
    return result, steps


def test_variations_are_seeded_and_deterministic(pipe, reference):
    a = pipe.run(reference, 3, seed=4, schedule=SHORT)
    b = pipe.run(reference, 3, seed=4, schedule=SHORT)
    c = pipe.run(reference, 3, seed=5, schedule=SHORT)
    assert a.images.shape == (3, 32, 32, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images[0], a.images[1])  # each variation from its own seed
    assert a.seeds == (4, 5, 6) and a.predicted.shape == (3,)
    assert a.class_name == pipe.class_names[a.target_class]


def test_two_stages_report_their_losses_and_the_matching_improves(pipe, reference):
    # the paper's TV weight: with our strong default TV a random tiny classifier's matching term barely moves
    schedule = Schedule(stage1=30, stage2=8, tv=1e-4, critic_warmup=2)
    result, steps = run_logged(pipe, reference, num_variations=2, seed=0, schedule=schedule)
    assert [s.iteration for s in steps] == list(range(1, 39)) and {s.total for s in steps} == {38}
    assert [s.stage for s in steps] == [1] * 30 + [2] * 8
    assert "pc" not in steps[0].losses and {"pc", "critic"} <= set(steps[-1].losses)
    # stage 2's warm-up iterations train the critic without its term in the images' loss
    assert "critic" in steps[30].losses and "pc" not in steps[31].losses and "pc" in steps[32].losses
    assert steps[29].losses["dm"] < 0.5 * steps[0].losses["dm"]  # eq. 5 pulls the statistics to the reference's
    assert np.array_equal(steps[-1].images(), result.images)


def test_raising_in_on_step_stops_within_that_iteration(pipe, reference):
    seen = []

    def stop_at_4(step):
        seen.append(step.iteration)
        if step.iteration == 4:
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="went away"):
        pipe.run(reference, 2, seed=0, schedule=Schedule(stage1=50, stage2=50), on_step=stop_at_4)
    assert seen == [1, 2, 3, 4]


@pytest.mark.parametrize("controls, message", [
    (Controls(layers=("conv9",)), r"^layers: unknown layer\(s\) \['conv9'\]"),
    (Controls(layers=()), "^layers: give at least one"),
    (Controls(position=Position(1.2, 0.5)), "^position: x=1.2 is outside the image"),
    (Controls(position=Position(0.5, 0.5, sigma=0)), "^position: sigma=0"),
    (Controls(shape_layers=("conv4",)), "^shape_layers: given without shape_image"),
    (Controls(shape_image=np.zeros((32, 32, 3), np.uint8), style_content=np.zeros((32, 32, 3), np.uint8)),
     "^style_content: cannot be combined with shape_image"),
    (Controls(style_content=np.zeros((32, 32), np.uint8)), "^style_content: expected a uint8 RGB image"),
    (Controls(counterfactual_query=np.zeros((32, 32, 3), np.uint8)), "^query_region: counterfactual edits need"),
    (Controls(counterfactual_query=np.zeros((32, 32, 3), np.uint8), query_region=np.ones((16, 16), bool),
              reference_region=np.ones((32, 32), bool)), r"^query_region: shape \(16, 16\) does not match"),
    (Controls(counterfactual_query=np.zeros((32, 32, 3), np.uint8), query_region=np.ones((32, 32), bool),
              reference_region=np.zeros((32, 32), bool)), "^reference_region: the region is empty"),
])
def test_bad_controls_name_the_field(pipe, reference, controls, message):
    with pytest.raises(ValueError, match=message):
        pipe.run(reference, 1, seed=0, controls=controls, schedule=SHORT)


def test_bad_reference_and_count(pipe, reference):
    with pytest.raises(ValueError, match="^reference: expected a uint8 RGB image"):
        pipe.run(reference.astype(np.float32), 1, seed=0)
    with pytest.raises(ValueError, match="^num_variations: must be at least 1"):
        pipe.run(reference, 0, seed=0)


def test_counterfactual_keeps_the_query_outside_its_region(pipe, reference):
    query = render_scene(9, 32).image
    region = np.zeros((32, 32), bool)
    region[16:] = True
    controls = Controls(counterfactual_query=query, query_region=region, reference_region=region)
    schedule = replace(pipe.default_schedule(controls), stage1=40, stage2=0)
    out = pipe.run(reference, 2, seed=0, controls=controls, schedule=schedule).images
    diff = np.abs(out.astype(float) - query.astype(float)).mean(axis=(0, 3))  # [H, W]
    assert diff[:16].mean() < 0.5 * diff[16:].mean()


def test_style_starts_from_the_content_image(pipe, reference):
    content = render_scene(11, 32).image
    styled = pipe.run(reference, 2, seed=0, controls=Controls(style_content=content), schedule=SHORT).images
    free = pipe.run(reference, 2, seed=0, schedule=SHORT).images
    assert np.abs(styled.astype(float) - content).mean() < 0.5 * np.abs(free.astype(float) - content).mean()


def test_position_and_deepinversion_terms_enter_the_loss(pipe, reference):
    _, steps = run_logged(pipe, reference, num_variations=1, seed=0,
                          controls=Controls(position=Position(0.2, 0.8)), schedule=SHORT)
    assert all(np.isfinite(s.losses["loc"]) for s in steps)
    _, steps = run_logged(pipe, reference, num_variations=2, seed=0,
                          schedule=Schedule(stage1=10, stage2=0, dm=0.0, bn=1.0))
    assert "dm" not in steps[0].losses and steps[-1].losses["bn"] < steps[0].losses["bn"]


def test_image_started_modes_get_a_gentler_default_schedule(pipe):
    content = np.zeros((32, 32, 3), np.uint8)
    assert pipe.default_schedule(Controls(style_content=content)).lr < pipe.default_schedule().lr


def test_critic_augmentation_flips_and_shifts_each_image_with_reflected_borders():
    from semgen.pipelines.imagine import _augment

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert _augment(x, 0, torch.Generator().manual_seed(0)) is x
    out = _augment(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(len(x)):  # every output is one flip + shift of its own input, with no wrap seam
        padded = [torch.nn.functional.pad(v[None], [2] * 4, mode="reflect")[0] for v in (x[i], x[i].flip(2))]
        candidates = [p[:, dy:dy + 8, dx:dx + 8] for p in padded for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) for c in candidates)
    outs = {tuple(_augment(x, 2, torch.Generator().manual_seed(s))[0].flatten()[:8].tolist()) for s in range(6)}
    assert len(outs) > 1  # the seed chooses the flip and shift
