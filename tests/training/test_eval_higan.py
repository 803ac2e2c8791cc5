from random_bundles import make_random_higan_bundle
from training.eval_higan import eval_higan


def test_eval_higan_prints_every_key_and_writes_the_pictures(tmp_path):
    bundle = make_random_higan_bundle(tmp_path / "models")
    report = tmp_path / "report"
    result = eval_higan(str(bundle), k=6, edit_k=4, n_r2=20, progress=lambda msg: None, report_dir=str(report))
    attrs = ("horizon", "mountain_height", "tree_count", "building_count", "time_of_day", "cloudiness", "warmth",
             "colorfulness")
    for a in attrs:
        assert f"predictors.{a}.r2" in result and f"boundaries.{a}.val_acc" in result
        assert result[f"boundaries.{a}.method"] == "svm"  # the random bundle's boundaries
        assert all(result[f"rescoring.{a}.{layer}"] >= 0 for layer in range(8))
        assert isinstance(result[f"editing.{a}.monotonic"], bool) and result[f"editing.{a}.leakage"] >= 0
        assert f"editing.{a}.leakage_conditional" in result
        # a random generator's images move under any edit; the per-spread figure is that over the score change
        assert 0 < result[f"editing.{a}.pixel_change"] <= 1
        assert abs(result[f"editing.{a}.pixel_change_per_spread"] * abs(result[f"editing.{a}.change"])
                   - result[f"editing.{a}.pixel_change"]) < 1e-3
    assert "rescoring.beach.0" in result and "boundaries.beach.val_acc" in result
    assert set(result["hierarchy.order"].split(" < ")) == {"layout", "objects", "attribute", "color"}
    # transfers run only for source categories the (random) classifier predicts among the samples
    transfers = [k for k in result if k.startswith("transfer.") and k.endswith(".success")]
    assert all(0 <= result[k] <= 1 for k in transfers) and (report / "transfer.png").exists() == bool(transfers)
    for picture in ("rescoring.png", "editing.png", "disentanglement.png", "layers.png", "joint.png"):
        assert (report / picture).stat().st_size > 0
    assert (report / "higan.json").exists()
