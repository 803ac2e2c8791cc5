"""The forward pipelines with their modules on a CUDA GPU give the CPU's images within the cross-machine
tolerance of the golden record (README, Reproducibility: forward graphs, 4 levels at most, 0.25 on average)."""

import numpy as np
import pytest
import torch

from semgen.pipelines.forward import Op, run_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MAX_LEVELS, MEAN_LEVELS = 4, 0.25


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from random_bundles import make_random_bundle, make_random_semantics_bundle

    root = tmp_path_factory.mktemp("cuda")
    return make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)


def images_on(device: str, models, kind, op, args) -> np.ndarray:
    (result,) = run_batch(kind.from_dir(models, device=device), [(op, args)])
    assert not isinstance(result, Exception), result
    return np.asarray(result.images, np.int16)


@pytest.mark.parametrize("method", ["generate", "sample"])
def test_forward_work_on_cuda_matches_the_cpu(models, method):
    from semgen.data.scenes import render_scene
    from semgen.pipelines.pyramid import PyramidPipeline
    from semgen.pipelines.semantics import SemanticsPipeline

    if method == "generate":
        kind, op = PyramidPipeline, Op.GENERATE
        args = dict(image=render_scene(0, 32).image, levels={"conv3": None}, num_samples=4, seed=7, class_index=None)
    else:
        kind, op = SemanticsPipeline, Op.SAMPLE
        args = dict(seeds=[0, 1, 2, 3], latents=None, psi=0.7, predictor="lse")
    cpu, cuda = (images_on(device, models, kind, op, args) for device in ("cpu", "cuda"))
    diff = np.abs(cpu - cuda)
    assert cpu.shape == cuda.shape and diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, \
        (method, int(diff.max()), float(diff.mean()))
