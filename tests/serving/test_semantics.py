"""SemanticsService over real gRPC: an in-process server on a tiny random bundle (CPU), called
with the blocking SemanticsClient and the `semgen client semantics` commands."""

import io
import json
import math

import grpc
import numpy as np
import pytest
from PIL import Image
from servingkit import (in_process_semantics_server, in_process_server, in_thread, one_torch_thread,
                        sample_value, semantics_bundle, wait_until)  # noqa: F401 (fixtures)

from serving.core.healthcheck import check as health_check
from serving.core.protos import semantics_pb2 as pb
from serving.semantics.client import SemanticsClient, job_result, latents_array, mask_array, mask_png

IMAGE_SIZE, NUM_WS, W_DIM = 16, 6, 8  # what make_random_semantics_bundle(image_size=16) builds
LONG = 100_000  # iterations no test waits for: such a job ends only by cancel, deadline or limit
JOB_OPS = ("fit_head", "sample_conditional", "edit")
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("heads")


@pytest.fixture(scope="module")
def server(bundle, heads_dir):
    options = dict(max_iterations=LONG, max_fit_iterations=LONG)
    with in_thread(in_process_semantics_server(bundle, heads_dir, **options)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            s.client = client
            yield s


@pytest.fixture(scope="module")
def classes(bundle):
    from semgen.data.scenes import CLASSES

    return CLASSES


def image_meta(png: bytes):
    image = Image.open(io.BytesIO(png))
    return image.format, image.mode, image.size


def jobs_running(server) -> float:
    return sum(sample_value(server.metrics, "semgen_jobs_running", op=op) for op in JOB_OPS)


def jobs_ended(server, *outcomes) -> float:
    return sum(sample_value(server.metrics, "semgen_jobs_total", op=op, outcome=outcome)
               for op in JOB_OPS for outcome in outcomes)


def idle(server) -> bool:
    """True once no job runs (a finished job's thread may take a moment to count itself out)."""
    return wait_until(lambda: jobs_running(server) == 0, timeout=5)


def mask(size=IMAGE_SIZE, value=0, mode="L", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(buf, format=fmt)
    return buf.getvalue()


def latents(*shape) -> pb.Latents:
    return pb.Latents(shape=list(shape), values=[0.0] * math.prod(shape))


# ---- Sample, Segment ----------------------------------------------------------------------------

def test_sample_gives_images_latents_and_masks_by_a_head(server, classes):
    reply = server.client.sample(seeds=[1, 2, 3], head="lse")
    assert (len(reply.images), reply.width, reply.height, reply.head) == (3, IMAGE_SIZE, IMAGE_SIZE, "lse")
    assert [image_meta(png) for png in reply.images] == [("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))] * 3
    assert [image_meta(png) for png in reply.masks] == [("PNG", "L", (IMAGE_SIZE, IMAGE_SIZE))] * 3
    assert tuple(reply.class_names) == classes
    assert all(mask_array(png).max() < len(classes) for png in reply.masks)
    assert latents_array(reply.latents).shape == (3, NUM_WS, W_DIM)
    assert server.client.sample(seeds=[1, 2, 3], head="lse") == reply  # same seeds, same bytes
    other = server.client.sample(seeds=[4])
    assert len(set(reply.images)) == 3 and other.images[0] not in reply.images
    assert not other.masks and not other.class_names  # no head, no masks


def test_latents_round_trip_and_segment(server, classes):
    by_seed = server.client.sample(seeds=[5, 6], head="segmenter")
    by_latent = server.client.sample(latents=by_seed.latents, head="segmenter")
    assert by_latent.images == by_seed.images and by_latent.masks == by_seed.masks
    w = latents_array(by_seed.latents)[:, 0]  # a seed's w+ is one w on every layer
    assert server.client.sample(latents=w).images == by_seed.images
    segmented = server.client.segment(by_seed.latents, "segmenter")
    assert segmented.masks == by_seed.masks and tuple(segmented.class_names) == classes
    average = server.client.sample(seeds=[1, 2], truncation_psi=0.0)  # psi 0: every seed -> the average w
    assert average.images[0] == average.images[1] != server.client.sample(seeds=[1]).images[0]


# ---- FitHead, ListHeads -------------------------------------------------------------------------

def test_fit_head_is_usable_at_once_listed_and_survives_a_restart(server, bundle, heads_dir):
    shots = server.client.sample(seeds=[7, 8], head="lse")
    masks = [mask_array(png) % 3 for png in shots.masks]
    info = server.client.fit_head("water-3", shots.latents, masks, ["a", "b", "c"], seed=1, iterations=4)
    assert (info.name, info.kind, tuple(info.class_names), info.bundled, info.shots) == \
        ("water-3", "lse", ("a", "b", "c"), False, 2)
    segmented = server.client.segment(shots.latents, "water-3")
    assert tuple(segmented.class_names) == ("a", "b", "c") and all(mask_array(m).max() < 3 for m in segmented.masks)
    steered = job_result(server.client.sample_conditional(mask_png(masks[0]), "water-3", n_init=2, iterations=2))
    assert tuple(steered.class_names) == ("a", "b", "c") and len(steered.images) == 1
    listed = {h.name: h for h in server.client.list_heads()}
    assert tuple(listed["water-3"].class_names) == ("a", "b", "c") and listed["water-3"].shots == 2
    assert listed["lse"].bundled and listed["segmenter"].kind == "segmenter"

    with pytest.raises(grpc.RpcError) as e:
        server.client.fit_head("water-3", shots.latents, masks, ["a", "b", "c"], iterations=1)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert e.value.details() == "name: a head named 'water-3' exists; set replace to overwrite it"

    with in_thread(in_process_semantics_server(bundle, heads_dir)) as restarted:
        with SemanticsClient(restarted.address) as client:
            relisted = {h.name: h for h in client.list_heads()}
            again = client.segment(shots.latents, "water-3")
    assert relisted["water-3"] == listed["water-3"] and again.masks == segmented.masks

    replaced = server.client.fit_head("water-3", shots.latents, masks, ["a", "b", "c", "d"], iterations=1, replace=True)
    assert tuple(replaced.class_names) == ("a", "b", "c", "d")
    assert [tuple(h.class_names) for h in server.client.list_heads() if h.name == "water-3"] == [tuple("abcd")]
    assert idle(server)


# ---- SampleConditional, EditSemantics -----------------------------------------------------------

def test_sample_conditional_streams_progress_then_a_result(server):
    target = server.client.sample(seeds=[9], head="lse").masks[0]
    request = dict(num_samples=2, seed=3, n_init=4, iterations=6, preview_every=3)
    events = list(server.client.sample_conditional(target, "lse", **request))
    progress, result = [e.progress for e in events[:-1]], events[-1].result
    assert [p.iteration for p in progress] == [1, 2, 3, 4, 5, 6] and {p.total_iterations for p in progress} == {6}
    assert all(math.isfinite(p.loss) for p in progress)
    assert [image_meta(p.preview) if p.preview else None for p in progress] == \
        [None, None, ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE)), None, None, ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))]
    assert len(result.images) == len(result.masks) == len(result.scores) == 2
    assert latents_array(result.latents).shape == (2, NUM_WS, W_DIM)
    for png, score in zip(result.masks, result.scores):  # the score is the share of pixels on target
        assert score == pytest.approx((mask_array(png) == mask_array(target)).mean())
    assert job_result(server.client.sample_conditional(target, "lse", **request)) == result  # seeded
    assert idle(server)


def test_edit_streams_progress_then_the_edited_image_and_its_latent(server):
    original = server.client.sample(seeds=[10], head="lse")
    target = mask_array(original.masks[0]).copy()
    target[4:12, 4:12] = 2  # paint a block as class 2
    events = list(server.client.edit(original.latents, target, "lse", iterations=5, space="w"))
    assert [e.WhichOneof("event") for e in events] == ["progress"] * 5 + ["result"]
    edited = events[-1].result
    assert len(edited.images) == 1 and edited.images[0] != original.images[0]
    assert image_meta(edited.masks[0]) == ("PNG", "L", (IMAGE_SIZE, IMAGE_SIZE)) and 0 <= edited.scores[0] <= 1
    more = job_result(server.client.edit(edited.latents, target, "lse", iterations=2))  # keep editing
    assert latents_array(more.latents).shape == (1, NUM_WS, W_DIM)
    assert idle(server)


# ---- cancel, deadline, limits -------------------------------------------------------------------

def test_cancel_stops_the_job_and_the_server_answers_on(server):
    assert idle(server)
    cancelled = jobs_ended(server, "cancelled")
    target = server.client.sample(seeds=[1], head="lse").masks[0]
    events = server.client.sample_conditional(target, "lse", n_init=1, iterations=LONG)
    first = next(events)
    assert (first.progress.iteration, first.progress.total_iterations) == (1, LONG) and jobs_running(server) == 1
    events.cancel()
    assert idle(server)
    assert jobs_ended(server, "cancelled") == cancelled + 1
    assert len(server.client.sample(seeds=[2]).images) == 1


def test_deadline_stops_streaming_and_unary_jobs(server):
    assert idle(server)
    stopped = jobs_ended(server, "deadline", "cancelled")
    shot = server.client.sample(seeds=[3], head="lse")
    with pytest.raises(grpc.RpcError) as e:
        job_result(server.client.edit(shot.latents, shot.masks[0], "lse", iterations=LONG, timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert idle(server)
    with pytest.raises(grpc.RpcError) as e:
        server.client.fit_head("too-slow", shot.latents, [mask()], ["a", "b"], iterations=LONG, timeout=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert idle(server)
    assert jobs_ended(server, "deadline", "cancelled") == stopped + 2
    assert "too-slow" not in {h.name for h in server.client.list_heads()}  # stopped before saving


def test_jobs_over_the_limit_are_resource_exhausted(bundle, tmp_path):
    options = dict(max_jobs=1, max_iterations=LONG)
    with in_thread(in_process_semantics_server(bundle, tmp_path / "heads", **options)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            shot = client.sample(seeds=[1], head="lse")
            running = client.sample_conditional(shot.masks[0], "lse", n_init=1, iterations=LONG)
            next(running)
            errors = []
            for call in (lambda: job_result(client.edit(shot.latents, shot.masks[0], "lse", iterations=1)),
                         lambda: client.fit_head("extra", shot.latents, [mask()], ["a", "b"], iterations=1)):
                with pytest.raises(grpc.RpcError) as e:
                    call()
                errors.append((e.value.code(), e.value.details()))
            assert len(client.sample(seeds=[2]).images) == 1  # forward work does not wait for jobs
            running.cancel()
            assert idle(s)
            after = job_result(client.edit(shot.latents, shot.masks[0], "lse", iterations=1))
    message = "jobs: the server is at its limit of 1 running iterative jobs (--max-jobs); retry later"
    assert errors == [(grpc.StatusCode.RESOURCE_EXHAUSTED, message)] * 2
    assert len(after.images) == 1
    assert sample_value(s.metrics, "semgen_jobs_total", op="edit", outcome="rejected") == 1


# ---- bad input ----------------------------------------------------------------------------------

ONE = latents(1, NUM_WS, W_DIM)
BASE = {
    "sample": {},
    "segment": dict(latents=ONE, head="lse"),
    "fit_head": dict(name="ok", latents=ONE, masks=[mask()], class_names=["a", "b"], iterations=1),
    "sample_conditional": dict(target_mask=mask(), head="lse", n_init=1, iterations=1),
    "edit": dict(latent=ONE, target_mask=mask(), head="lse", iterations=1),
}
BAD_INPUTS = {
    "seeds-and-latents": ("sample", dict(seeds=[1], latents=ONE), INVALID, "seeds: give seeds or latents, not both"),
    "no-seeds": ("sample", {}, INVALID, "seeds: give 1 to 16 seeds (or latents), got 0"),
    "latent-shape": ("sample", dict(latents=latents(1, 5, W_DIM)), INVALID,
                     "latents: shape must be [N, 6, 8] (w+) or [N, 8] (w), got [1, 5, 8]"),
    "latent-values": ("sample", dict(latents=pb.Latents(shape=[1, 8], values=[0.0] * 7)), INVALID,
                      "latents: shape [1, 8] needs 8 values, got 7"),
    "latent-nan": ("segment", dict(latents=pb.Latents(shape=[1, 8], values=[math.nan] * 8)), INVALID,
                   "latents: contains NaN or infinity"),
    "psi-range": ("sample", dict(seeds=[1], truncation_psi=1.5), INVALID, "truncation_psi: must be in [0, 1]"),
    "unknown-head": ("sample", dict(seeds=[1], head="nope"), NOT_FOUND, "head: no head named 'nope'; known: "),
    "segment-no-head": ("segment", dict(head=""), INVALID, "head: missing; expected one of "),
    "mask-class-beyond-table": ("sample_conditional", dict(target_mask=mask(value=11)), INVALID,
                                "target_mask: class index 11 is not in head 'lse' (11 classes, 0..10)"),
    "mask-size": ("sample_conditional", dict(target_mask=mask(size=8)), INVALID,
                  "target_mask: size 8x8 does not match the model's 16x16"),
    "mask-rgb": ("edit", dict(target_mask=mask(mode="RGB")), INVALID, "target_mask: mode RGB; send a single-channel"),
    "mask-jpeg": ("edit", dict(target_mask=mask(fmt="JPEG")), INVALID, "target_mask: JPEG is lossy"),
    "scs-limits": ("sample_conditional", dict(num_samples=17, n_init=300, space="z", learning_rate=-1.0), INVALID,
                   "num_samples: must be between 1 and 16 (0 = 1), got 17; n_init: must be between 1 and 256 (0 = 100), "
                   "got 300; learning_rate: must be in (0, 1] (0 = 0.01), got -1; space: must be 'w' or 'w+'"),
    "scs-seed": ("sample_conditional", dict(seed=2**32), INVALID, "seed: must be below 4294967296"),
    "scs-unknown-head": ("sample_conditional", dict(head="nope"), NOT_FOUND, "head: no head named 'nope'"),
    "edit-two-latents": ("edit", dict(latent=latents(2, W_DIM)), INVALID, "latent: give exactly one latent, got 2"),
    "fit-bad-name": ("fit_head", dict(name="Bad Name"), INVALID, "name: 'Bad Name' is not a valid head name"),
    "fit-bundled-name": ("fit_head", dict(name="lse"), INVALID, "name: 'lse' is a bundled head and cannot be replaced"),
    "fit-segmenter": ("fit_head", dict(name="segmenter"), INVALID, "name: 'segmenter' is reserved"),
    "fit-mask-beyond-classes": ("fit_head", dict(masks=[mask(value=2)]), INVALID,
                                "masks[0]: class index 2 is not in class_names (2 classes, 0..1)"),
    "fit-mask-count": ("fit_head", dict(masks=[mask(), mask()]), INVALID, "masks: give one mask per latent (1), got 2"),
    "fit-one-class": ("fit_head", dict(class_names=["a"]), INVALID, "class_names: give 2 to 256 classes, got 1"),
    "fit-17-shots": ("fit_head", dict(latents=latents(17, W_DIM), masks=[mask()] * 17), INVALID,
                     "latents: give 1 to 16 latents, got 17"),
}


@pytest.mark.parametrize("rpc, fields, code, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_field(server, rpc, fields, code, message):
    call = getattr(server.client, rpc)
    with pytest.raises(grpc.RpcError) as e:
        reply = call(**{**BASE[rpc], **fields})
        if rpc in ("sample_conditional", "edit"):
            job_result(reply)
    assert (e.value.code(), e.value.details()[:len(message)]) == (code, message)


def test_malformed_bytes_and_services_not_in_the_bundle(server):
    from serving.core.protos import pyramid_pb2, pyramid_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        unary = channel.unary_unary("/semgen.v1.SemanticsService/Sample")
        stream = channel.unary_stream("/semgen.v1.SemanticsService/EditSemantics")
        with pytest.raises(grpc.RpcError) as garbage:
            unary(b"\xff\xff\xff", timeout=10)
        with pytest.raises(grpc.RpcError) as garbage_stream:
            list(stream(b"\xff\xff\xff", timeout=10))
        with pytest.raises(grpc.RpcError) as pyramid:
            pyramid_pb2_grpc.PyramidServiceStub(channel).Generate(pyramid_pb2.GenerateRequest(), timeout=10)
    assert garbage.value.code() == garbage_stream.value.code() == INVALID
    assert garbage.value.details().startswith("request: 3 bytes do not parse as a semgen.v1.SampleRequest")
    assert pyramid.value.code() == NOT_FOUND and "has no pyramid/" in pyramid.value.details()
    assert health_check(server.address, "semgen.v1.SemanticsService") == "SERVING"
    assert health_check(server.address, "semgen.v1.PyramidService") == "NOT_SERVING"


def test_unavailable_until_loaded_and_listed_by_reflection():
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with in_thread(in_process_server(pipeline=None)) as s, SemanticsClient(s.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.list_heads()
        with grpc.insecure_channel(s.address) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services, proto = set(db.get_services()), db.FindFileContainingSymbol("semgen.v1.JobEvent").name
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNAVAILABLE, "model: still loading; retry shortly")
    assert "semgen.v1.SemanticsService" in services and proto == "semgen/v1/semantics.proto"


# ---- `semgen client semantics ...` --------------------------------------------------------------

def test_cli_writes_images_masks_and_latents(server, tmp_path, capsys):
    from semgen_cli import build_parser

    def cli(*argv) -> int:
        args = build_parser().parse_args(["client", "semantics", *argv, "--address", server.address])
        return args.func(args)

    assert cli("sample", "--seeds", "1,2", "--head", "lse", "--out", str(tmp_path / "s")) == 0
    written = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert written == ["classes.json", "image_00.png", "image_01.png", "latents.npy", "mask_00.png", "mask_01.png",
                       "sample_options.json"]
    assert json.loads((tmp_path / "s" / "sample_options.json").read_text())["seeds"] == [1, 2]
    assert np.load(tmp_path / "s" / "latents.npy").shape == (2, NUM_WS, W_DIM)
    assert image_meta((tmp_path / "s" / "mask_00.png").read_bytes())[1] == "P"  # colours to look at, indices inside
    latents_npy, mask0 = str(tmp_path / "s" / "latents.npy"), str(tmp_path / "s" / "mask_00.png")
    assert cli("segment", "--latents", latents_npy, "--head", "segmenter", "--out", str(tmp_path / "m")) == 0
    assert cli("fit-head", "--name", "from-cli", "--latents", latents_npy, "--masks", mask0,
               str(tmp_path / "s" / "mask_01.png"), "--class-names", ",".join(f"c{i}" for i in range(11)),
               "--iterations", "2", "--replace") == 0
    assert cli("list-heads") == 0
    assert cli("sample-conditional", "--target", mask0, "--head", "from-cli", "--num-samples", "2", "--n-init", "2",
               "--iterations", "4", "--preview-every", "2", "--out", str(tmp_path / "c")) == 0
    assert cli("edit", "--latents", latents_npy, "--index", "1", "--target", mask0, "--head", "lse",
               "--iterations", "2", "--out", str(tmp_path / "e")) == 0
    assert cli("segment", "--latents", latents_npy, "--head", "nope") == 1
    out, err = capsys.readouterr()
    assert "from-cli\tlse\tuser, 2 shots\tc0, c1," in out
    assert sorted(p.name for p in (tmp_path / "c").glob("*.png")) == \
        ["image_00.png", "image_01.png", "mask_00.png", "mask_01.png", "preview_0002.png", "preview_0004.png"]
    assert len(list((tmp_path / "e").glob("image_*.png"))) == 1 and len(list((tmp_path / "m").glob("mask_*"))) == 2
    assert "error: NOT_FOUND: head: no head named 'nope'" in err
    assert idle(server)
