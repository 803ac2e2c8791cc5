"""ImagineService over real gRPC: an in-process server on a tiny random classifier (CPU), called
with the blocking ImagineClient and the `semgen client imagine` command."""

import io
import json
import math
import threading

import grpc
import numpy as np
import pytest
from PIL import Image
from servingkit import (
    FakePipeline,
    image_meta,
    in_process_imagine_server,
    in_process_server,
    in_thread,
    sample_value,
    torch_threads,
    wait_until,
)

from serving.core.healthcheck import check as health_check
from serving.imagine.client import ImagineClient, job_result, region_png

IMAGE_SIZE, CLASSES = 32, ("a", "b", "c")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
LONG = 100_000  # iterations no test waits for: such a job ends only by cancel, deadline or limit
METHOD = "semgen.v1.ImagineService/Imagine"
SHORT = dict(stage1_iterations=2, stage2_iterations=2)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):  # the tiny classifier runs fastest on one thread, and the machine is shared
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    from semgen.checkpoints import save_checkpoint
    from semgen.networks.classifier import Classifier

    models = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    c = Classifier(image_size=IMAGE_SIZE, num_classes=3, stage_channels=(4, 8, 8, 8, 8),
                   convs_per_stage=(1, 1, 1, 1, 1), fc_dim=16, class_names=CLASSES)
    save_checkpoint(models / "classifier", c, c.config)
    return models


@pytest.fixture(scope="module")
def server(models):
    with in_thread(in_process_imagine_server(models, max_imagine_iterations=LONG)) as s:
        with ImagineClient(s.address, timeout=60) as client:
            s.client = client
            yield s


def png(width=48, height=40, seed=0) -> bytes:
    """A noisy RGB image (not square: the pipeline uses its centre square)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def region(width=48, height=40, box=(0, 0, 24, 20)) -> bytes:
    mask = np.zeros((height, width), bool)
    left, top, w, h = box
    mask[top:top + h, left:left + w] = True
    return region_png(mask)


REFERENCE = png()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def ended(server, *outcomes) -> float:
    return sum(sample_value(server.metrics, "semgen_jobs_total", op="imagine", outcome=o) for o in outcomes)


def idle(server) -> bool:
    """True once no job holds a slot and the jobs gauge is back to 0."""
    return wait_until(lambda: server.engine.running_jobs == 0 and
                      sample_value(server.metrics, "semgen_jobs_running", op="imagine") == 0, timeout=5)


# ---- results --------------------------------------------------------------------------------

def test_progress_every_iteration_previews_every_n_then_the_variations(server):
    request = dict(num_variations=3, seed=5, stage1_iterations=3, stage2_iterations=3, preview_every=2)
    events = list(server.client.imagine(REFERENCE, **request))
    assert [e.WhichOneof("event") for e in events] == ["progress"] * 6 + ["result"]
    progress, result = [e.progress for e in events[:-1]], events[-1].result
    assert [(p.stage, p.iteration, p.total) for p in progress] == \
        [(1, 1, 6), (1, 2, 6), (1, 3, 6), (2, 4, 6), (2, 5, 6), (2, 6, 6)]
    assert all("total" in p.losses and all(math.isfinite(v) for v in p.losses.values()) for p in progress)
    assert [len(p.preview_png) for p in progress] == [0, 3, 0, 3, 0, 3]
    assert {image_meta(data) for p in progress for data in p.preview_png} == {("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))}
    assert [image_meta(data) for data in result.images_png] == [("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))] * 3
    assert len(set(result.images_png)) == 3  # each variation from its own seed
    assert list(result.seeds) == [5, 6, 7]
    assert 0 <= result.target_class < 3 and result.target_class_name == CLASSES[result.target_class]
    assert len(result.predicted_class) == 3 and all(0 <= c < 3 for c in result.predicted_class)
    assert list(progress[-1].preview_png) == list(result.images_png)  # the last preview is the result
    assert idle(server)


def test_same_request_and_seed_same_bytes_other_seed_differs(server):
    request = dict(num_variations=2, seed=11, **SHORT)
    first = job_result(server.client.imagine(REFERENCE, **request))
    assert job_result(server.client.imagine(REFERENCE, **request)) == first
    other = job_result(server.client.imagine(REFERENCE, **{**request, "seed": 12}))
    assert not set(other.images_png) & set(first.images_png)
    default = job_result(server.client.imagine(REFERENCE, seed=11, **SHORT))  # 0 variations = 4
    assert len(default.images_png) == 4 and list(default.seeds) == [11, 12, 13, 14]


def run_with(server, **controls):
    events = list(server.client.imagine(REFERENCE, num_variations=2, seed=3, **SHORT, **controls))
    return events[-1].result, {name for e in events[:-1] for name in e.progress.losses}


def test_each_control_gives_variations(server):
    plain, plain_losses = run_with(server)
    positioned, position_losses = run_with(server, position=(0.2, 0.8, 0.1))
    shaped, _ = run_with(server, shape=png(seed=1), shape_layers=["conv5"])
    content = Image.new("RGB", (40, 40), (200, 30, 40))
    buf = io.BytesIO()
    content.save(buf, format="PNG")
    styled, _ = run_with(server, style_content=buf.getvalue())
    swapped, swap_losses = run_with(server, query=png(seed=2), query_region=region(), reference_region=region())
    for result in (positioned, shaped, styled, swapped):
        assert [image_meta(data) for data in result.images_png] == [("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))] * 2
        assert not set(result.images_png) & set(plain.images_png)  # the control changed the images
    assert "loc" in position_losses and "loc" not in plain_losses  # Grad-CAM pushed towards the blob
    assert "counterfactual" in swap_losses
    # Style starts from the content image: its variations stay far closer to it than plain ones.
    red = np.array([200, 30, 40])
    assert distance(styled, red) < distance(plain, red) / 2


def distance(result, color) -> float:
    """Mean absolute pixel difference of the variations from a colour."""
    return float(np.mean([np.abs(pixels(data) - color).mean() for data in result.images_png]))


def test_get_imagine_info(server, models):
    from semgen.pipelines.imagine import ImaginePipeline, Schedule

    pipe = ImaginePipeline.from_dir(models)
    info = server.client.info()
    assert (info.image_size, tuple(info.class_names), tuple(info.layer_names)) == (IMAGE_SIZE, CLASSES, LAYERS)
    assert (tuple(info.default_layers), tuple(info.shallow_layers), tuple(info.deep_layers)) == \
        (pipe.default_layers, pipe.shallow_layers, pipe.deep_layers)
    assert (info.default_stage1_iterations, info.default_stage2_iterations) == (Schedule().stage1, Schedule().stage2)
    assert health_check(server.address, "semgen.v1.ImagineService") == "SERVING"
    assert health_check(server.address, "semgen.v1.PyramidService") == "NOT_SERVING"


# ---- cancel, deadline, limits -----------------------------------------------------------------

def test_cancel_stops_the_job_within_one_iteration(server, monkeypatch):
    assert idle(server)
    cancelled = ended(server, "cancelled")
    pipeline = server.engine._pipeline
    seen, release = [], threading.Event()
    real_run = pipeline.run

    def run(*args, on_step, **kwargs):
        def step(s):  # iteration 2 waits until the cancel has reached the server
            seen.append(s.iteration)
            if s.iteration == 2:
                release.wait(10)
            on_step(s)

        return real_run(*args, on_step=step, **kwargs)

    monkeypatch.setattr(pipeline, "run", run)
    events = server.client.imagine(REFERENCE, num_variations=2, stage1_iterations=LONG, stage2_iterations=LONG)
    first = next(events).progress
    assert (first.stage, first.iteration, first.total) == (1, 1, 2 * LONG) and server.engine.running_jobs == 1
    events.cancel()
    # The handler has ended (and so set the job's stop flag) before the job finishes iteration 2.
    assert wait_until(lambda: sample_value(server.metrics, "semgen_requests_in_flight", method=METHOD) == 0)
    release.set()
    assert idle(server)
    assert seen == [1, 2]  # iteration 2 was the last: the job stopped at once
    assert ended(server, "cancelled") == cancelled + 1
    monkeypatch.undo()
    assert len(job_result(server.client.imagine(REFERENCE, num_variations=1, **SHORT)).images_png) == 1


def test_deadline_is_deadline_exceeded_and_stops_the_job(server):
    assert idle(server)
    stopped = ended(server, "deadline", "cancelled")
    with pytest.raises(grpc.RpcError) as e:
        job_result(server.client.imagine(REFERENCE, num_variations=1, stage1_iterations=LONG, timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert idle(server)
    assert ended(server, "deadline", "cancelled") == stopped + 1
    assert len(job_result(server.client.imagine(REFERENCE, num_variations=1, **SHORT)).images_png) == 1


def test_jobs_over_the_limit_are_resource_exhausted(models):
    options = dict(max_jobs=1, max_imagine_iterations=LONG)
    with in_thread(in_process_imagine_server(models, **options)) as s, ImagineClient(s.address, timeout=30) as client:
        running = client.imagine(REFERENCE, num_variations=1, stage1_iterations=LONG)
        next(running)
        with pytest.raises(grpc.RpcError) as e:
            job_result(client.imagine(REFERENCE, num_variations=1, **SHORT))
        assert client.info().image_size == IMAGE_SIZE  # unary calls do not wait for jobs
        running.cancel()
        assert idle(s)
        after = job_result(client.imagine(REFERENCE, num_variations=1, **SHORT))
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "jobs: the server is at its limit of 1 running iterative jobs (--max-jobs); retry later")
    assert len(after.images_png) == 1
    assert sample_value(s.metrics, "semgen_jobs_total", op="imagine", outcome="rejected") == 1


# ---- bad input ----------------------------------------------------------------------------------

BAD_INPUTS = {
    "reference-garbage": (dict(reference=b"not an image"), "reference_png: not a PNG or JPEG image"),
    "reference-missing": (dict(reference=b""), "reference_png: empty; send PNG or JPEG bytes"),
    "reference-too-small": (dict(reference=png(4, 4)), "reference_png: 4×4 is too small"),
    "unknown-layer": (dict(layers=["conv2", "conv9"]),
                      "layers: unknown layer 'conv9'; this classifier's layers are conv1, conv2, conv3, conv4, conv5"),
    "position-outside": (dict(position=(1.5, -0.25)), "position.x: 1.5 is outside the image; give a fraction of its "
                         "width in [0, 1]; position.y: -0.25 is outside the image"),
    "sigma": (dict(position=(0.5, 0.5, 2.0)), "position.sigma: must be in (0, 1]"),
    "too-many-variations": (dict(num_variations=17), "num_variations: must be between 1 and 16 (0 = 4), got 17"),
    "iterations-cap": (dict(stage1_iterations=0, stage2_iterations=LONG + 1),
                       f"stage2_iterations: must be between 0 and {LONG} (unset = "),
    "no-iterations": (dict(stage1_iterations=0, stage2_iterations=0),
                      "stage2_iterations: stage1_iterations and stage2_iterations are both 0"),
    "region-size": (dict(query=png(), query_region=region(24, 20), reference_region=region()),
                    "counterfactual.query_region_png: size 24x20 does not match the image's 48x40"),
    "region-empty": (dict(query=png(), query_region=region(), reference_region=region(box=(0, 0, 0, 0))),
                     "counterfactual.reference_region_png: empty (no pixel above 0)"),
    "region-missing": (dict(query=png(), query_region=region()), "counterfactual.reference_region_png: empty"),
    "two-controls": (dict(shape=png(), style_content=png()), "style: cannot be combined with shape"),
    "shape-layer": (dict(shape=png(), shape_layers=["fc8"]), "shape.shape_layers: unknown layer 'fc8'"),
}


@pytest.mark.parametrize("fields, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_field(server, fields, message):
    request = dict(reference=REFERENCE, num_variations=1, **SHORT)
    before = ended(server, "ok", "invalid", "error")
    with pytest.raises(grpc.RpcError) as e:
        job_result(server.client.imagine(**{**request, **fields}))
    assert (e.value.code(), e.value.details()[:len(message)]) == (INVALID, message)
    assert ended(server, "ok", "invalid", "error") == before  # refused before any job started


def test_malformed_bytes_and_a_server_without_a_classifier(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as garbage:
            list(channel.unary_stream(f"/{METHOD}")(b"\xff\xff\xff", timeout=10))
    assert garbage.value.code() == INVALID
    assert garbage.value.details().startswith("request: 3 bytes do not parse as a semgen.v1.ImagineRequest")
    with in_thread(in_process_server(FakePipeline())) as s, ImagineClient(s.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as absent:
            client.info()
        assert health_check(s.address, "semgen.v1.ImagineService") == "NOT_SERVING"
    assert absent.value.code() == grpc.StatusCode.NOT_FOUND and "has no classifier/" in absent.value.details()


# ---- `semgen client imagine` --------------------------------------------------------------------

def test_cli_writes_variations_previews_and_info(server, tmp_path, capsys):
    from semgen_cli import build_parser

    def cli(*argv) -> int:
        args = build_parser().parse_args(["client", "imagine", *argv, "--address", server.address])
        return args.func(args)

    (tmp_path / "ref.png").write_bytes(REFERENCE)
    out = tmp_path / "out"
    assert cli("--reference", str(tmp_path / "ref.png"), "--variations", "2", "--seed", "4", "--stage1", "2",
               "--stage2", "2", "--position", "0.5,0.4", "--preview-every", "2", "--out-dir", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "imagine_options.json", "previews", "result.json", "variation_00.png", "variation_01.png"]
    assert json.loads((out / "imagine_options.json").read_text())["position"] == [0.5, 0.4]
    assert sorted(p.name for p in (out / "previews").iterdir()) == \
        ["preview_00002_00.png", "preview_00002_01.png", "preview_00004_00.png", "preview_00004_01.png"]
    summary = json.loads((out / "result.json").read_text())
    assert summary["seeds"] == [4, 5] and summary["target_class_name"] == CLASSES[summary["target_class"]]
    assert cli("info") == 0
    assert cli("--reference", str(tmp_path / "ref.png"), "--layers", "conv9", "--out-dir", str(out)) == 1
    assert cli("--out-dir", str(out)) == 2
    printed, err = capsys.readouterr()
    assert "2 variations of class" in printed and "layers: conv1, conv2, conv3, conv4, conv5" in printed
    assert "error: INVALID_ARGUMENT: layers: unknown layer 'conv9'" in err
    assert "error: --reference is required" in err
    assert idle(server)
