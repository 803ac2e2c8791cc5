"""HiganService over real gRPC: an in-process server on a tiny random HiGAN bundle (CPU), called
with the blocking HiganClient and the `semgen client attributes|manipulate` commands."""

import asyncio
import io
import json
import logging
import math
import shutil

import grpc
import numpy as np
import pytest
from PIL import Image
from servingkit import (
    FakePipeline,
    image_meta,
    in_process_higan_server,
    in_process_server,
    in_thread,
    sample_value,
    torch_threads,
)

from serving.core.healthcheck import check as health_check
from serving.higan.client import HiganClient, frame_latents
from serving.core.protos import semantics_pb2

IMAGE_SIZE, NUM_WS, W_DIM = 32, 8, 8  # what make_random_higan_bundle(image_size=32) builds
SERVICE = "semgen.v1.HiganService"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):  # the tiny models run fastest on one thread, and the machine is shared
        yield


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from random_bundles import make_random_higan_bundle

    return make_random_higan_bundle(tmp_path_factory.mktemp("bundle"), image_size=IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def boundaries(bundle):
    from semgen.pipelines.higan import load_boundaries

    return load_boundaries(bundle / "boundaries")


@pytest.fixture(scope="module")
def server(bundle):
    with in_thread(in_process_higan_server(bundle)) as s:
        with HiganClient(s.address, timeout=30) as client:
            s.client = client
            yield s


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def unedited(server, seeds):
    """Frames of `seeds` with an edit of strength 0: the seeds' own images and w+."""
    return server.client.manipulate([("horizon", 0.0)], seeds=seeds)


def assert_healthy(server) -> None:
    """The server still answers a good request after an error."""
    reply = server.client.manipulate([("warmth", 1.0)], seeds=[1])
    assert len(reply.frames) == 1 and image_meta(reply.frames[0].image_png) == ("PNG", "RGB", (IMAGE_SIZE,) * 2)


# ---- ListAttributes -----------------------------------------------------------------------------

def test_list_attributes_gives_every_boundary_with_levels_and_default_layers(server, boundaries):
    reply = server.client.list_attributes()
    assert (reply.num_layers, reply.w_dim, reply.image_size) == (NUM_WS, W_DIM, IMAGE_SIZE)
    assert len(reply.attributes) == 20  # 8 attributes, 8 categories, 4 category transfers
    got = [(a.name, a.level, tuple(a.default_layers), round(a.validation_accuracy, 6), round(a.scale, 6))
           for a in reply.attributes]
    assert got == [(b.name, b.level, b.default_layers, b.val_acc, b.scale) for b in boundaries.values()]
    by_name = {a.name: a for a in reply.attributes}
    assert (by_name["horizon"].level, list(by_name["horizon"].default_layers)) == ("layout", [0, 1])
    assert (by_name["tree_count"].level, list(by_name["tree_count"].default_layers)) == ("objects", [2, 3])
    assert (by_name["warmth"].level, list(by_name["warmth"].default_layers)) == ("color", [4, 5, 6, 7])
    assert sum(a.level == "category" for a in reply.attributes) == 12  # 8 categories + 4 transfers
    assert health_check(server.address, SERVICE) == "SERVING"
    assert health_check(server.address, "semgen.v1.PyramidService") == "NOT_SERVING"


# ---- Manipulate -------------------------------------------------------------------------------

def test_frames_are_sweep_major_pngs_with_latents_and_scores_and_repeatable(server, boundaries):
    request = dict(edits=[("horizon", 2.0), ("tree_count", -1.5, [3, 4, 5])], seeds=[3, 4], sweep=[-1, 0, 0.5, 1])
    reply = server.client.manipulate(**request)
    assert (reply.num_layers, reply.w_dim, reply.image_size) == (NUM_WS, W_DIM, IMAGE_SIZE)
    assert [(f.multiplier, f.index) for f in reply.frames] == \
        [(-1, 0), (-1, 1), (0, 0), (0, 1), (0.5, 0), (0.5, 1), (1, 0), (1, 1)]
    assert [image_meta(f.image_png) for f in reply.frames] == [("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))] * 8
    assert all(len(f.latent) == NUM_WS * W_DIM for f in reply.frames)
    scores = {n for n in boundaries if "_to_" not in n}  # a transfer boundary moves its target category's score
    assert all(set(f.scores) == scores and all(map(math.isfinite, f.scores.values())) for f in reply.frames)
    assert len({f.image_png for f in reply.frames}) == 8  # every seed and multiplier its own image
    assert server.client.manipulate(**request) == reply  # same request, same bytes
    default = server.client.manipulate([("horizon", 2.0)], seeds=[3])  # no sweep = just the edit
    assert [(f.multiplier, f.index) for f in default.frames] == [(1, 0)]
    assert default.frames[0].image_png != reply.frames[6].image_png  # the tree_count edit changed the image


def test_multiplier_zero_is_the_unedited_image_and_others_differ(server):
    swept = server.client.manipulate([("time_of_day", 3.0)], seeds=[5, 6], sweep=[0, 1, -1])
    plain = unedited(server, [5, 6])
    assert [f.image_png for f in swept.frames[:2]] == [f.image_png for f in plain.frames]
    assert [f.latent for f in swept.frames[:2]] == [f.latent for f in plain.frames]
    for moved in swept.frames[2:]:
        assert moved.image_png != plain.frames[moved.index].image_png
        assert np.abs(pixels(moved.image_png) - pixels(plain.frames[moved.index].image_png)).max() > 0
    w_plus = frame_latents(plain)  # a seed's w+ is one w on every layer
    assert np.array_equal(w_plus, np.repeat(w_plus[:, :1], NUM_WS, axis=1))


def changed_layers(edited, original) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.abs(edited - original).max(axis=1) > 1e-6)]


def test_an_edit_moves_only_its_layers_by_strength_times_scale_along_the_normal(server, boundaries):
    original = frame_latents(unedited(server, [7]))[0]
    on_layers = frame_latents(server.client.manipulate([("tree_count", -1.5, [3, 4, 5])], seeds=[7]))[0]
    assert changed_layers(on_layers, original) == [3, 4, 5]
    b = boundaries["tree_count"]
    assert np.allclose(on_layers[3:6] - original[3:6], -1.5 * b.scale * b.normal, atol=1e-5)
    by_default = frame_latents(server.client.manipulate([("horizon", 2.0)], seeds=[7]))[0]
    assert changed_layers(by_default, original) == list(boundaries["horizon"].default_layers) == [0, 1]
    # Conditional editing: the move keeps its length but has no component along the kept attribute.
    kept = frame_latents(server.client.manipulate([("horizon", 2.0)], seeds=[7], condition_on=["mountain_height"]))[0]
    move = kept[0] - original[0]
    assert changed_layers(kept, original) == [0, 1]
    assert abs(float(move @ boundaries["mountain_height"].normal)) < 1e-4
    assert abs(float(move @ boundaries["horizon"].normal)) > 0.1  # still moves along horizon
    assert np.linalg.norm(move) == pytest.approx(2.0 * boundaries["horizon"].scale, rel=1e-4)


def test_latents_give_the_same_images_as_their_seeds(server):
    by_seed = server.client.manipulate([("warmth", 1.5)], seeds=[8, 9], sweep=[0, 1])
    w_plus = frame_latents(unedited(server, [8, 9]))
    assert server.client.manipulate([("warmth", 1.5)], latents=w_plus, sweep=[0, 1]) == by_seed
    w = w_plus[:, 0]  # [N, w_dim]: the same w on every layer
    assert server.client.manipulate([("warmth", 1.5)], latents=w, sweep=[0, 1]).frames == by_seed.frames


# ---- errors ---------------------------------------------------------------------------------------

def latents(shape, count=None, value=0.0) -> semantics_pb2.Latents:
    return semantics_pb2.Latents(shape=list(shape), values=[value] * (count if count is not None else math.prod(shape)))


BAD_INPUTS = {
    "unknown-attribute": (dict(edits=[("warmth", 1.0), ("nope", 1.0)]), NOT_FOUND,
                          "edits[1].attribute: no boundary named 'nope'; known: horizon, mountain_height, "),
    "unknown-condition": (dict(condition_on=["nope"]), NOT_FOUND, "condition_on[0]: no boundary named 'nope'"),
    "layers-out-of-range": (dict(edits=[("horizon", 1.0, [2, 12])]), INVALID,
                            "edits[0].layers: [12] out of range; this generator has layers 0..7"),
    "layer-twice": (dict(edits=[("horizon", 1.0, [3, 3])]), INVALID, "edits[0].layers: [3] given twice"),
    "no-edits": (dict(edits=[]), INVALID, "edits: give 1 to 16 edits (attribute, strength, layers), got 0"),
    "no-attribute": (dict(edits=[("", 1.0)]), INVALID, "edits[0].attribute: missing; expected one of horizon, "),
    "nan-strength": (dict(edits=[("horizon", math.nan)]), INVALID, "edits[0].strength: must be a finite number in "
                     "[-100, 100] (in units of the boundary's scale), got nan"),
    "huge-strength": (dict(edits=[("horizon", 1e6)]), INVALID, "edits[0].strength: must be a finite number"),
    "no-source": (dict(seeds=None), INVALID, "seeds: give 1 to 16 seeds (or latents), got 0"),
    "too-many-seeds": (dict(seeds=list(range(17))), INVALID, "seeds: give 1 to 16 seeds (or latents), got 17"),
    "too-many-sweeps": (dict(sweep=[0.1 * i for i in range(17)]), INVALID,
                        "sweep: give at most 16 multipliers, got 17"),
    "infinite-sweep": (dict(sweep=[1, math.inf]), INVALID, "sweep[1]: must be a finite number in [-100, 100] "
                       "(a multiplier of every strength), got inf"),
    "latent-length": (dict(seeds=None, latents=latents([1, W_DIM], count=7)), INVALID,
                      "latents: shape [1, 8] needs 8 values, got 7"),
    "latent-shape": (dict(seeds=None, latents=latents([1, 5, W_DIM])), INVALID,
                     "latents: shape must be [N, 8, 8] (w+) or [N, 8] (w), got [1, 5, 8]"),
    "latent-nan": (dict(seeds=None, latents=latents([1, W_DIM], value=math.nan)), INVALID,
                   "latents: contains NaN or infinity"),
    "condition-twice": (dict(condition_on=["warmth", "warmth"]), INVALID, "condition_on[1]: 'warmth' is given twice"),
    # The pipeline's own check, through the engine: 8 other normals span all of w (w_dim 8).
    "condition-spans-w": (dict(condition_on=["mountain_height", "tree_count", "building_count", "time_of_day",
                                             "cloudiness", "warmth", "colorfulness", "beach"]), INVALID,
                          "condition_on: 'horizon' lies in the span of"),
}


@pytest.mark.parametrize("fields, code, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_field_and_the_server_answers_on(server, fields, code, message):
    request = {**dict(edits=[("horizon", 1.0)], seeds=[1]), **fields}
    with pytest.raises(grpc.RpcError) as e:
        server.client.manipulate(**request)
    assert (e.value.code(), e.value.details()[:len(message)]) == (code, message)
    assert_healthy(server)


def test_several_problems_are_reported_together(server):
    with pytest.raises(grpc.RpcError) as e:
        server.client.manipulate([("horizon", math.inf, [9])], seeds=[1], sweep=[math.nan])
    assert (e.value.code(), e.value.details()) == (INVALID, "; ".join([
        "edits[0].strength: must be a finite number in [-100, 100] (in units of the boundary's scale), got inf",
        "edits[0].layers: [9] out of range; this generator has layers 0..7",
        "sweep[0]: must be a finite number in [-100, 100] (a multiplier of every strength), got nan"]))


def test_the_engine_maps_the_pipelines_unknown_attribute_to_not_found(server):
    """The servicer checks names first; the engine also maps the pipeline's KeyError itself."""
    from serving.core.errors import NotFound
    from serving.higan.engine import AttributeEdit

    async def call():
        return await server.engine.manipulate([AttributeEdit("nope", 1.0)], [1], None, (1.0,), ())

    with pytest.raises(NotFound, match=r"^attribute: no boundary named 'nope'"):
        asyncio.run(call())


def test_malformed_bytes_metrics_and_a_server_without_higan_models(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as garbage:
            channel.unary_unary(f"/{SERVICE}/Manipulate")(b"\xff\xff\xff", timeout=10)
    assert garbage.value.code() == INVALID
    assert garbage.value.details().startswith("request: 3 bytes do not parse as a semgen.v1.ManipulateRequest")
    method = f"{SERVICE}/Manipulate"
    assert sample_value(server.metrics, "semgen_requests_total", method=method, code="OK") > 0
    assert sample_value(server.metrics, "semgen_requests_total", method=method, code="INVALID_ARGUMENT") > 0
    assert sample_value(server.metrics, "semgen_request_latency_seconds_count", method=f"{SERVICE}/ListAttributes",
                        code="OK") > 0
    assert sample_value(server.metrics, "semgen_engine_compute_seconds_count", op="manipulate") > 0

    with in_thread(in_process_server(pipeline=None)) as s, HiganClient(s.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as loading:
            client.list_attributes()
    assert (loading.value.code(), loading.value.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                               "model: still loading; retry shortly")
    with in_thread(in_process_server(FakePipeline())) as s, HiganClient(s.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as absent:
            client.manipulate([("horizon", 1.0)], seeds=[1])
        assert health_check(s.address, SERVICE) == "NOT_SERVING"
    assert absent.value.code() == NOT_FOUND
    assert "has no stylegan/, so semgen.v1.HiganService is not served" in absent.value.details()


def test_reflection_lists_the_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services, proto = set(db.get_services()), db.FindFileContainingSymbol("semgen.v1.ManipulateRequest").name
    assert SERVICE in services and proto == "semgen/v1/higan.proto"


def test_the_server_serves_higan_whenever_the_bundle_has_a_generator(bundle, tmp_path, caplog):
    """Directions and the attribute predictors are optional parts: without them the service is up, ListAttributes
    says what there is and an edit answers FAILED_PRECONDITION (tests/export/test_import_stylegan2.py)."""
    from serving.higan.engine import EmbeddedHiganEngine
    from serving.core.metrics import ServingMetrics
    from serving.engines import load_embedded
    from serving.options import ServeOptions

    def load(models):
        engines = load_embedded(ServeOptions(models=str(models), device="cpu", heads_dir=str(tmp_path / "heads"),
                                             runtime="torch"),
                                ServingMetrics())
        for engine in engines.loaded():
            asyncio.run(engine.close())
        return engines

    assert isinstance(load(bundle).higan, EmbeddedHiganEngine)
    generator_only = tmp_path / "generator_only"
    shutil.copytree(bundle, generator_only, ignore=shutil.ignore_patterns("boundaries", "attributes", "classifier", "pyramid"))
    engines = load(generator_only)
    assert engines.higan.info.attributes == {} and engines.semantics is not None
    no_generator = tmp_path / "no_generator"
    shutil.copytree(bundle, no_generator, ignore=shutil.ignore_patterns("stylegan"))
    with caplog.at_level(logging.INFO, logger="serving.server"):
        engines = load(no_generator)
    assert engines.higan is None and engines.semantics is None
    lines = [r.getMessage() for r in caplog.records if "HiganService" in r.getMessage()]
    assert lines == [f"HiganService not served: {no_generator} has no stylegan/"]


# ---- `semgen client attributes|manipulate` --------------------------------------------------------

def test_cli_lists_attributes_and_writes_edited_images(server, tmp_path, capsys):
    from semgen_cli import build_parser

    def cli(*argv) -> int:
        args = build_parser().parse_args(["client", *argv, "--address", server.address])
        return args.func(args)

    assert cli("attributes") == 0
    out = tmp_path / "edits"
    assert cli("manipulate", "--seed", "3", "--seed", "4", "--edit", "horizon:2", "--edit", "tree_count:-1.5:3,4,5",
               "--sweep", "-1,0,1", "--condition-on", "warmth", "--out-dir", str(out)) == 0
    pngs = ["00_x+0.png", "00_x+1.png", "00_x-1.png", "01_x+0.png", "01_x+1.png", "01_x-1.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*pngs, "latents.npy", "manipulate_options.json",
                                                            "scores.json"])
    assert json.loads((out / "manipulate_options.json").read_text())["seeds"] == [3, 4]
    assert {image_meta((out / name).read_bytes()) for name in pngs} == {("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))}
    reply = server.client.manipulate([("horizon", 2.0), ("tree_count", -1.5, [3, 4, 5])], seeds=[3, 4],
                                     sweep=[-1, 0, 1], condition_on=["warmth"])
    assert (out / "01_x-1.png").read_bytes() == reply.frames[1].image_png
    assert np.array_equal(np.load(out / "latents.npy"), frame_latents(reply))
    frames = json.loads((out / "scores.json").read_text())["frames"]
    assert [(f["file"], f["index"], f["multiplier"]) for f in frames[:3]] == \
        [("00_x-1.png", 0, -1), ("01_x-1.png", 1, -1), ("00_x+0.png", 0, 0)]
    assert len(frames[0]["scores"]) == 16
    again = tmp_path / "again"
    assert cli("manipulate", "--latent-file", str(out / "latents.npy"), "--edit", "warmth:1",
               "--out-dir", str(again)) == 0
    assert len(list(again.glob("*.png"))) == 6
    assert cli("manipulate", "--seed", "1", "--edit", "nope:1", "--out-dir", str(tmp_path / "bad")) == 1
    printed, err = capsys.readouterr()
    assert "name" in printed and "default layers" in printed and "validation accuracy" in printed
    assert any(line.split()[:3] == ["tree_count", "objects", "2,3"] for line in printed.splitlines())
    assert "generator: 8 layers (0..7), w_dim 8, images 32x32" in printed
    header = next(line for line in printed.splitlines() if line.startswith("file"))
    assert header.split() == ["file", "horizon", "tree_count", "warmth"]
    assert "6 images (32x32) in" in printed
    assert "error: NOT_FOUND: edits[0].attribute: no boundary named 'nope'" in err
    assert not (tmp_path / "bad").exists()
