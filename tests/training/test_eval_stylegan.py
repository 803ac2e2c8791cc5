"""`semgen eval stylegan` on a tiny random bundle: every number, and the class-mix part of fd_fc7."""

import json

import numpy as np
import pytest
import torch

from random_bundles import make_random_bundle, make_random_semantics_bundle
from training.eval_stylegan import _class_mix_fd, eval_stylegan


def test_eval_stylegan_reports_realism_and_the_class_mix(tmp_path):
    models = make_random_semantics_bundle(make_random_bundle(tmp_path / "models", image_size=32), image_size=32)
    result = eval_stylegan(str(models), n=40, report_dir=str(tmp_path / "report"))
    assert min(result["fd_fc7"], result["fd_fc7_untrained"], result["fd_fc7_real"], result["fd_fc7_class_mix"]) >= 0
    for key in ("class_shares", "class_shares_real"):
        assert len(result[key]) == 8 and sum(result[key].values()) == pytest.approx(1.0, abs=1e-3)
    assert json.loads((tmp_path / "report" / "stylegan.json").read_text()) == result
    assert (tmp_path / "report" / "samples.png").stat().st_size > 0
    assert np.isfinite(result["fd_fc7"])


class RedOrBlue(torch.nn.Module):
    """A stand-in classifier: class 0 = reddish, 1 = bluish; fc7 = the mean colour."""

    def features(self, x):
        colour = x.mean((2, 3))
        red = (colour[:, 0] > colour[:, 2]).float()
        return {"fc7": colour, "fc8": torch.stack([red, 1 - red], 1)}


def test_the_class_mix_part_of_fd_is_what_dropping_a_class_costs():
    rng = np.random.default_rng(0)
    real = np.zeros((400, 8, 8, 3), np.uint8)
    real[:200, ..., 0] = rng.integers(150, 255, (200, 1, 1))  # 200 red scenes, 200 blue ones
    real[200:, ..., 2] = rng.integers(150, 255, (200, 1, 1))
    classifier = RedOrBlue()
    out = classifier.features(torch.tensor(real).permute(0, 3, 1, 2).float() / 127.5 - 1)
    real_fc7, predicted = out["fc7"].double().numpy(), out["fc8"].argmax(1).numpy()
    same_mix = _class_mix_fd(real_fc7, predicted, np.array([0.5, 0.5]))
    only_red = _class_mix_fd(real_fc7, predicted, np.array([1.0, 0.0]))
    assert same_mix < 0.05 < only_red  # the mean colour moves by ~0.6 on two axes when blue is dropped
