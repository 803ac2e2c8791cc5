import json

import numpy as np
import pytest
import torch

from random_bundles import make_random_semantics_bundle
from semgen.checkpoints import load_checkpoint
from semgen.pipelines.semantics import SemanticsPipeline
from training.eval_scs import edit_scores, scripted_edit
from training.heads import HeadsOptions, fewshot_seeds, train_heads
from training.iou import IoUMeter, image_miou
from training.segmenter import SegmenterOptions, train_segmenter
from training.stylegan import StyleGANOptions, train_stylegan


def test_iou_follows_the_papers_definition():
    target = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 0]]])
    meter = IoUMeter(3)
    meter.add(pred, target)
    # class 0: image 1 IoU 1/2, image 2 IoU 0/1 -> 0.25; class 1: 2/3 (image 2 has none); class 2: 3/4
    assert meter.per_class() == pytest.approx([0.25, 2 / 3, 0.75])
    assert meter.miou() == pytest.approx((0.25 + 2 / 3 + 0.75) / 3)
    assert image_miou(pred, target, 3).tolist() == pytest.approx([(0.5 + 2 / 3) / 2, (0 + 0.75) / 2])


def test_scripted_edits_do_what_they_say():
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[16:] = 1
    labels[4:10, 4:12] = 2  # a small class-2 region in class 0
    rng = np.random.default_rng(0)
    area = lambda m, c: int((m == c).sum())  # noqa: E731
    for _ in range(5):
        grown = scripted_edit(labels, "grow", 3, rng)
        changed = grown != labels
        c = int(grown[changed][0])
        assert area(grown, c) > area(labels, c)
        removed = scripted_edit(labels, "remove", 3, rng)
        gone = [k for k in range(3) if area(labels, k) and not area(removed, k)]
        assert len(gone) == 1
        added = scripted_edit(labels, "add", 3, rng)
        assert added is not None and 0 < int((added != labels).sum()) <= 64


def test_edit_scores_tell_a_fooled_predictor_from_a_changed_picture():
    original = torch.zeros(2, 4, 4, dtype=torch.long)
    target = original.clone()
    target[:, :2, :2] = 1  # 4 edited pixels per image
    got = original.clone()
    got[0, 0, :2] = 1  # image 0: 2 of its 4 edited pixels changed; image 1: none
    got[1, 3, 3] = 2  # image 1: one kept pixel changed class
    steered = target.clone()  # the steering head reads every edit as done
    scores = edit_scores(got, original, target, steered)
    assert scores["success"] == pytest.approx((0.5 + 0.0) / 2)
    assert scores["preservation"] == pytest.approx((1.0 + 11 / 12) / 2)
    assert scores["steered_success"] == 1.0
    assert "steered_success" not in edit_scores(got, original, target)


def test_stylegan_training_runs_resumes_and_ships_a_loadable_generator(tmp_path):
    opt = dict(run_dir=str(tmp_path / "run"), out=str(tmp_path / "G"), image_size=16, g_channels="8,8,8",
               d_channels="8,8,8", z_dim=8, w_dim=8, batch_size=4, r1_every=2, save_every=2, sample_every=100, threads=1)
    train_stylegan(StyleGANOptions(steps=2, **opt))
    train_stylegan(StyleGANOptions(steps=3, **opt))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["g"]) and np.isfinite(r["d"]) for r in log)
    G = load_checkpoint(tmp_path / "G")
    assert json.loads((tmp_path / "G" / "config.json").read_text())["step"] == 3
    assert G(torch.randn(2, 8)).shape == (2, 3, 16, 16)
    assert G.w_avg.abs().sum() > 0  # the running average of w was tracked
    with pytest.raises(ValueError, match="g_channels"):
        train_stylegan(StyleGANOptions(steps=1, **{**opt, "g_channels": "8,x"}))


def test_stylegan_trains_in_bf16_channels_last_from_a_warm_start(tmp_path):
    opt = dict(image_size=16, g_channels="8,8,8", d_channels="8,8,8", z_dim=8, w_dim=8, batch_size=4, r1_every=2,
               save_every=1, sample_every=100, threads=1)
    train_stylegan(StyleGANOptions(steps=2, run_dir=str(tmp_path / "run1"), out=str(tmp_path / "G1"), **opt))
    warm = load_checkpoint(tmp_path / "G1")
    fast = dict(opt, bf16=True, channels_last=True, warm_start=str(tmp_path / "G1"), seed=5)
    train_stylegan(StyleGANOptions(steps=1, run_dir=str(tmp_path / "run2"), out=str(tmp_path / "G2"), **fast))
    log = [json.loads(line) for line in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["g"]) and np.isfinite(r["d"]) for r in log)
    G2 = load_checkpoint(tmp_path / "G2")
    # one step from the warm weights stays near them; a fresh start (seed 5) would be far away
    assert (G2.const - warm.const).abs().max() < 0.05
    fresh = train_stylegan(StyleGANOptions(steps=1, run_dir=str(tmp_path / "run3"), out=str(tmp_path / "G3"),
                                           **dict(fast, warm_start="")))
    assert (load_checkpoint(fresh).const - warm.const).abs().max() > 0.5
    with pytest.raises(ValueError, match="warm_start"):
        train_stylegan(StyleGANOptions(steps=1, run_dir=str(tmp_path / "run4"), out=str(tmp_path / "G4"),
                                       **dict(fast, g_channels="8,8,4")))


TINY_GAN = dict(image_size=16, g_channels="8,8,8", d_channels="8,8,8", z_dim=8, w_dim=8, batch_size=4, r1_every=2,
                save_every=100, sample_every=100, threads=1)


def _weights(path):
    return load_checkpoint(path).state_dict()


def test_a_run_stopped_by_the_clock_and_rendered_by_workers_ends_with_the_same_weights(tmp_path, capsys):
    whole = train_stylegan(StyleGANOptions(steps=3, run_dir=str(tmp_path / "whole"), out=str(tmp_path / "G1"), **TINY_GAN))
    # a limit shorter than any step: each call makes one step, saves and stops; workers render the batches
    pieces = dict(TINY_GAN, steps=3, run_dir=str(tmp_path / "pieces"), out=str(tmp_path / "G2"), max_minutes=1e-9,
                  data_workers=2)
    for done in (1, 2):
        train_stylegan(StyleGANOptions(**pieces))
        assert torch.load(tmp_path / "pieces" / "state.pt", weights_only=True)["step"] == done
        assert f"at step {done} of 3, state saved" in capsys.readouterr().out
    train_stylegan(StyleGANOptions(**pieces))
    a, b = _weights(whole), _weights(tmp_path / "G2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pack_carries_the_run_on_at_its_step_in_small_bf16_files(tmp_path):
    from safetensors.torch import load_file

    run = dict(TINY_GAN, run_dir=str(tmp_path / "run"), out=str(tmp_path / "G"), pack_to=str(tmp_path / "pack"))
    train_stylegan(StyleGANOptions(steps=3, **run))
    assert json.loads((tmp_path / "pack" / "warm.json").read_text())["step"] == 3
    packed = load_file(str(tmp_path / "pack" / "G_ema.safetensors"))
    assert {v.dtype for v in packed.values()} == {torch.bfloat16}
    on = dict(TINY_GAN, run_dir=str(tmp_path / "on"), out=str(tmp_path / "G_on"), warm_start=str(tmp_path / "pack"))
    train_stylegan(StyleGANOptions(steps=4, **on))
    # one more step (the 4th: the step count went on from the pack) from the packed weights
    assert json.loads((tmp_path / "G_on" / "config.json").read_text())["step"] == 4
    assert (_weights(tmp_path / "G_on")["const"] - _weights(tmp_path / "G")["const"]).abs().max() < 0.05


def test_during_the_d_warmup_only_d_learns(tmp_path):
    train_stylegan(StyleGANOptions(steps=2, run_dir=str(tmp_path / "run1"), out=str(tmp_path / "G1"), **TINY_GAN))
    warm = dict(TINY_GAN, warm_start=str(tmp_path / "G1"), d_warmup=2, save_every=1)
    train_stylegan(StyleGANOptions(steps=2, run_dir=str(tmp_path / "run2"), out=str(tmp_path / "G2"), **warm))
    before, after = load_checkpoint(tmp_path / "G1"), load_checkpoint(tmp_path / "G2")
    assert all(torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    state = torch.load(tmp_path / "run2" / "state.pt", weights_only=True)
    assert all(torch.equal(state["G"][k], v) for k, v in before.state_dict().items() if k != "w_avg")
    assert state["opt_d"]["state"] and not state["opt_g"]["state"]  # D took steps, G none
    train_stylegan(StyleGANOptions(steps=3, run_dir=str(tmp_path / "run2"), out=str(tmp_path / "G2"), **warm))
    assert not torch.equal(load_checkpoint(tmp_path / "G2").const, before.const)  # after it, G learns


def test_stylegan_names_a_bad_device(tmp_path):
    opt = dict(TINY_GAN, steps=1, run_dir=str(tmp_path / "run"), out=str(tmp_path / "G"))
    with pytest.raises(ValueError, match="device: 'tpu'"):
        train_stylegan(StyleGANOptions(device="tpu", **opt))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_stylegan(StyleGANOptions(device="cuda", **opt))
    with pytest.raises(ValueError, match="data_workers"):
        train_stylegan(StyleGANOptions(data_workers=-1, **opt))


def test_bench_stylegan_reports_images_per_second_per_setting_and_names_its_device(tmp_path):
    from training.bench import SETTINGS, bench_stylegan

    result = bench_stylegan([("8,8,8,8,8", "8,8,8,8,8")], batch_sizes=(2,), steps=1, threads=1,
                            report_dir=str(tmp_path), progress=lambda _: None)
    assert result["device"] == "cpu" and [r["setting"] for r in result["rows"]] == list(SETTINGS)
    assert all(r["images_per_s"] > 0 and r["g_params"] > 0 for r in result["rows"])
    assert json.loads((tmp_path / "stylegan_step.json").read_text()) == result
    with pytest.raises(ValueError, match="device"):
        bench_stylegan([("8,8,8,8,8", "8,8,8,8,8")], device="gpu0", report_dir=str(tmp_path))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stylegan_trains_on_cuda_in_bf16_and_the_checkpoint_loads_on_the_cpu(tmp_path):
    opt = dict(TINY_GAN, steps=2, device="cuda", bf16=True, channels_last=True, data_workers=1,
               run_dir=str(tmp_path / "run"), out=str(tmp_path / "G"))
    train_stylegan(StyleGANOptions(**opt))
    G = load_checkpoint(tmp_path / "G")
    assert torch.isfinite(G(torch.randn(2, 8))).all()


def test_a_class_conditional_run_starts_from_an_unconditional_run(tmp_path):
    opt = dict(image_size=16, g_channels="8,8,8", d_channels="8,8,8", z_dim=8, w_dim=8, batch_size=4, r1_every=1,
               save_every=1, sample_every=100, threads=1, classes=False)
    train_stylegan(StyleGANOptions(steps=2, run_dir=str(tmp_path / "run1"), out=str(tmp_path / "G1"), **opt))
    before = torch.load(tmp_path / "run1" / "state.pt", weights_only=True)
    conditional = dict(opt, classes=True, warm_start=str(tmp_path / "run1"))
    train_stylegan(StyleGANOptions(steps=1, run_dir=str(tmp_path / "run2"), out=str(tmp_path / "G2"), **conditional))
    after = torch.load(tmp_path / "run2" / "state.pt", weights_only=True)
    G2 = load_checkpoint(tmp_path / "G2")
    assert G2.config["num_classes"] == 8 and G2(torch.randn(2, 8)).shape == (2, 3, 16, 16)
    # G, D and the EMA came from run1 (one step moves them a little); the class embeddings started at 0 and learnt
    for name in ("G", "D"):
        assert (after[name]["class_embed"] != 0).any()
    assert (after["D"]["from_rgb.weight"] - before["D"]["from_rgb.weight"]).abs().max() < 0.05
    assert (after["G_ema"]["const"] - before["G_ema"]["const"]).abs().max() < 0.05


def test_heads_train_full_and_few_shot_from_a_bundle(tmp_path):
    models = make_random_semantics_bundle(tmp_path / "m")
    paths = train_heads(HeadsOptions(kind="lse,nse2", models=str(models), out_dir=str(tmp_path / "heads"),
                                     run_dir=str(tmp_path / "run"), steps=2, batch_size=2, threads=1))
    assert [p.name for p in paths] == ["lse", "nse2"]
    assert load_checkpoint(paths[1]).kind == "nse2"
    (few,) = train_heads(HeadsOptions(kind="lse", shots="2", models=str(models), out_dir=str(tmp_path / "heads"),
                                        fewshot_iterations=20, threads=1))
    assert few.name == "lse-2shot"
    with pytest.raises(ValueError, match="^kind:"):
        train_heads(HeadsOptions(kind="svm", models=str(models)))
    with pytest.raises(ValueError, match="^shots:"):
        train_heads(HeadsOptions(shots="40", models=str(models)))


def test_fewshot_draws_go_round_the_scene_categories(tmp_path):
    pipe = SemanticsPipeline.from_dir(make_random_semantics_bundle(tmp_path / "m", num_classes=4))
    category = lambda seeds: pipe.generator.class_of(pipe.z_from_seeds(seeds)).tolist()  # noqa: E731
    eight = fewshot_seeds(pipe, 8, draw=0)
    assert category(eight) == [0, 1, 2, 3, 0, 1, 2, 3] and len(set(eight)) == 8
    assert not set(eight) & set(fewshot_seeds(pipe, 8, draw=1))  # another repeat, other samples
    randomly = fewshot_seeds(pipe, 8, draw=0, per_category=False)
    assert (np.diff(randomly) == 1).all() and eight.min() >= randomly[0]  # the same block of seeds
    with pytest.raises(ValueError, match="^seed: few-shot draw"):
        fewshot_seeds(pipe, 8, draw=10**6)


def test_heads_train_from_a_pool_and_resume_on_the_same_pool(tmp_path):
    """--pool: batches come from N samples labelled once; a resumed run rebuilds the same pool,
    so stopping after step 1 and resuming to 3 gives the weights of an unbroken 3-step run (the
    learning rate drops after 40 % of a run's steps: a stop before the drop keeps the schedule)."""
    models = make_random_semantics_bundle(tmp_path / "m")

    def run(name, steps):
        return train_heads(HeadsOptions(kind="lse", models=str(models), out_dir=str(tmp_path / name), pool=5,
                                        run_dir=str(tmp_path / f"run-{name}"), steps=steps, batch_size=2,
                                        save_every=1, threads=1))[0]

    whole = load_checkpoint(run("whole", 3)).state_dict()
    run("broken", 1)
    resumed = load_checkpoint(run("broken", 3)).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ValueError, match="^pool: must be 0"):
        train_heads(HeadsOptions(pool=-1, models=str(models)))
    with pytest.raises(ValueError, match="^pool: .* GiB of features"):
        train_heads(HeadsOptions(pool=900_000, models=str(models)))


def test_segmenter_training_writes_a_segmenter_for_every_scene_class(tmp_path):
    train_segmenter(SegmenterOptions(run_dir=str(tmp_path / "run"), out=str(tmp_path / "seg"), image_size=32,
                                     steps=2, batch_size=2, threads=1))
    model = load_checkpoint(tmp_path / "seg")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 11, 32, 32)
    assert model.class_names[0] == "sky"
