"""`semgen eval imagine` and `semgen bench imagine` on a tiny random bundle: every key, sane ranges, pictures."""

import json

import numpy as np

from random_bundles import make_random_bundle
from semgen.pipelines.imagine import Schedule
from training.eval_imagine import bench_imagine, eval_imagine

METRICS = ("fd_fc7", "class_agreement", "diversity", "distance_to_reference", "seconds_per_variation")


def test_eval_imagine_reports_three_methods_and_the_controls(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    result = eval_imagine(str(bundle), n=3, variations=2, n_real=40, schedule=Schedule(stage1=2, stage2=2),
                          progress=lambda msg: None, report_dir=str(tmp_path / "report"))
    for method in ("imagine", "stage1", "deepinversion"):
        for metric in METRICS:
            assert np.isfinite(result[f"{method}.{metric}"]), f"{method}.{metric}"
        assert 0 <= result[f"{method}.class_agreement"] <= 1
        assert result[f"{method}.diversity"] > 0 and result[f"{method}.fd_fc7"] >= 0
    # different objectives, different images
    assert result["stage1.distance_to_reference"] != result["deepinversion.distance_to_reference"]
    assert 0 <= result["position.error"] <= 1.5 and result["real.fd_fc7"] >= 0
    for name in ("imagine.json", "variations.png", "position.png", "controls.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "imagine.json").read_text()) == result


def test_bench_imagine_prints_speed_and_the_quality_curve(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", image_size=32)
    result = bench_imagine(str(bundle), n=2, variations=2, totals=(2, 4), repeats=1, n_real=40,
                           schedule=Schedule(stage1=2, stage2=2), progress=lambda msg: None,
                           report_dir=str(tmp_path / "report"))
    assert result["seconds_per_variation"] > 0 and result["variations"] == 2
    assert set(result) >= {"fd_fc7.2", "fd_fc7.4"} and all(result[k] >= 0 for k in ("fd_fc7.2", "fd_fc7.4"))
    assert (tmp_path / "report" / "bench.json").exists() and (tmp_path / "report" / "curve.png").stat().st_size > 0
