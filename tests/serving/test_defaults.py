"""One rule for defaults in every RPC: a number left at 0 takes the default its .proto comment names ("0 = 1"); where
0 is itself meaningful the field is `optional` (or in a oneof) and only leaving it unset takes the default.

The .proto comments are read from the descriptors (protoc with source info); the calls go to `semgen serve` on the
bundled models with every field left at zero, then with only the required fields set.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from serving.bench.catalogue import class_mask, latents, png
from serving.core.protos import higan_pb2, imagine_pb2, pyramid_pb2, semantics_pb2
from serving.core.validation import Limits
from serving.imagine.engine import ImagineInfo
from serving.imagine.validation import check_imagine
from serving.semantics.engine import SemanticsInfo
from serving.semantics.validation import check_fit_head
from servingkit import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = {descriptor_pb2.FieldDescriptorProto.TYPE_INT32, descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
           descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
           descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE}
ZERO_SAID = re.compile(r"(^|[^\w.])0 (=|is|gives)|empty =|unset =")  # "0 = 1", "0 is a seed", "unset = 1"


def request_fields(tmp_path) -> list[tuple[str, descriptor_pb2.FieldDescriptorProto, str]]:
    """(message.field, field, its comment) of every number in the request messages of semgen.v1."""
    out = tmp_path / "semgen.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos" / "semgen").rglob("*.proto"))
    assert protoc.main(["protoc", f"-I{ROOT / 'protos'}", f"-I{well_known}", f"--descriptor_set_out={out}",
                        "--include_source_info", *sources]) == 0
    found = []
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        comments = {tuple(loc.path): loc.leading_comments + loc.trailing_comments
                    for loc in file.source_code_info.location}
        inputs = {m.input_type.rsplit(".", 1)[1] for s in file.service for m in s.method}

        def walk(message, path, name):
            for i, field in enumerate(message.field):
                if field.type in NUMBERS:
                    found.append((f"{name}.{field.name}", field, comments.get((*path, 2, i), "")))
            for j, nested in enumerate(message.nested_type):
                walk(nested, (*path, 3, j), f"{name}.{nested.name}")

        for i, message in enumerate(file.message_type):
            if message.name in inputs:
                walk(message, (4, i), message.name)
    return found


def test_every_number_in_a_request_says_what_zero_or_unset_means(tmp_path):
    fields = request_fields(tmp_path)
    assert len(fields) >= 30
    unsaid = [name for name, _, comment in fields if not ZERO_SAID.search(comment)]
    assert unsaid == []
    # an `optional` number is one where 0 is meaningful: its comment says what leaving it unset does
    optional = {name: comment for name, field, comment in fields if field.proto3_optional}
    assert set(optional) == {"ImagineRequest.stage1_iterations", "ImagineRequest.stage2_iterations",
                             "SampleRequest.truncation_psi", "SampleConditionalRequest.truncation_psi"}
    assert all("unset =" in comment for comment in optional.values())


def test_the_defaults_iterative_calls_document():
    info = ImagineInfo(image_size=64, class_names=("a", "b"), layer_names=("conv1",), default_layers=("conv1",),
                       shallow_layers=("conv1",), deep_layers=("conv1",), default_stage1=100, default_stage2=300)
    args = check_imagine(imagine_pb2.ImagineRequest(reference_png=png(1)), info, Limits())
    assert (args.num_variations, args.seed, args.stage1, args.stage2, args.preview_every) == (4, 0, 100, 300, 0)
    skip = check_imagine(imagine_pb2.ImagineRequest(reference_png=png(1), stage2_iterations=0), info, Limits())
    assert (skip.stage1, skip.stage2) == (100, 0)  # 0 is meaningful here: stage 1 only
    fit = check_fit_head(semantics_pb2.FitHeadRequest(name="a", latents=latents(1, 1, (10, 128)),
                                                      masks=[class_mask(1)], class_names=["x", "y"]),
                         SemanticsInfo(image_size=64, latent_shape=(10, 128), heads={}), Limits())
    assert fit.iterations is None and fit.seed == 0  # None: the paper's schedule for this many shots


P, S, I, H = "/semgen.v1.PyramidService/", "/semgen.v1.SemanticsService/", "/semgen.v1.ImagineService/", \
    "/semgen.v1.HiganService/"
HALF = pyramid_pb2.Mask(png=class_mask(255))
# rpc -> (method, streaming, request message class, the required fields, what the empty request is told)
CALLS = {
    "Generate": (P, False, pyramid_pb2.GenerateRequest, dict(image=png(1), level="conv5"), "image: empty"),
    "Repaint": (P, False, pyramid_pb2.RepaintRequest, dict(image=png(2), region=HALF, level="conv4"), "image: empty"),
    "Composite": (P, False, pyramid_pb2.CompositeRequest, dict(
        image=png(3), object_image=png(4, 24), box=pyramid_pb2.Box(left=8, top=8, width=24, height=24), level="conv3"),
        "image: empty"),
    "Sample": (S, False, semantics_pb2.SampleRequest, dict(seeds=[0]), "seeds: give 1 to 16 seeds (or latents), got 0"),
    "Segment": (S, False, semantics_pb2.SegmentRequest, dict(latents=latents(5, 1, (10, 128)), head="lse"), "latents"),
    "ListHeads": (S, False, semantics_pb2.ListHeadsRequest, {}, None),
    "SampleConditional": (S, True, semantics_pb2.SampleConditionalRequest,
                          dict(target_mask=class_mask(2), head="lse"), "target_mask: empty"),
    "EditSemantics": (S, True, semantics_pb2.EditSemanticsRequest,
                      dict(latent=latents(6, 1, (10, 128)), target_mask=class_mask(2), head="lse"), "latent"),
    "GetImagineInfo": (I, False, imagine_pb2.GetImagineInfoRequest, {}, None),
    "ListAttributes": (H, False, higan_pb2.ListAttributesRequest, {}, None),
    "Manipulate": (H, False, higan_pb2.ManipulateRequest, dict(
        seeds=higan_pb2.ManipulateRequest.Seeds(values=[0]),
        edits=[higan_pb2.ManipulateRequest.Edit(attribute="horizon")]), "seeds"),
}


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    with serve_subprocess(["--models", str(ROOT / "artifacts"), "--onnx-dir", str(tmp_path_factory.mktemp("onnx")),
                           "--heads-dir", str(tmp_path_factory.mktemp("heads"))]) as server:
        with grpc.insecure_channel(server.address) as channel:
            yield channel


def call(channel, rpc: str, request):
    service, stream, cls, _, _ = CALLS[rpc]
    method = channel.unary_stream if stream else channel.unary_unary
    reply = method(service + rpc, request_serializer=cls.SerializeToString,
                   response_deserializer=lambda b: b)(request, timeout=300)
    return list(reply) if stream else reply


@pytest.mark.parametrize("rpc", list(CALLS))
def test_a_request_left_at_zero_gets_the_documented_answer(channel, rpc):
    _, stream, cls, required, told = CALLS[rpc]
    if told is None:  # nothing is required: the empty request is a whole one
        call(channel, rpc, cls())
        return
    with pytest.raises(grpc.RpcError) as error:
        call(channel, rpc, cls())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith(told)


def test_only_the_required_fields_give_the_documented_defaults(channel):
    for rpc in ("Generate", "Repaint", "Composite"):  # num_samples 0 = 1; the class: the reference's
        reply = pyramid_pb2.GenerateResponse.FromString(call(channel, rpc, CALLS[rpc][2](**CALLS[rpc][3])))
        assert len(reply.images) == 1 and (reply.width, reply.height) == (64, 64)
    sample = semantics_pb2.SampleResponse.FromString(call(channel, "Sample", semantics_pb2.SampleRequest(seeds=[0])))
    psi_one = semantics_pb2.SampleResponse.FromString(call(channel, "Sample", semantics_pb2.SampleRequest(
        seeds=[0], truncation_psi=1.0)))
    assert len(sample.images) == 1 and sample.images == psi_one.images  # truncation_psi unset = 1
    for rpc in ("SampleConditional", "EditSemantics"):  # iterations 0 = 50; one sample; no previews
        events = [semantics_pb2.JobEvent.FromString(e) for e in call(channel, rpc, CALLS[rpc][2](**CALLS[rpc][3]))]
        progress = [e.progress for e in events if e.HasField("progress")]
        assert progress[-1].iteration == progress[-1].total_iterations == 50
        assert len(events[-1].result.images) == 1 and not any(e.HasField("result") for e in events[:-1])
    edited = higan_pb2.ManipulateResponse.FromString(call(channel, "Manipulate", higan_pb2.ManipulateRequest(
        **CALLS["Manipulate"][3])))
    unedited = higan_pb2.ManipulateResponse.FromString(call(channel, "Manipulate", higan_pb2.ManipulateRequest(
        seeds=higan_pb2.ManipulateRequest.Seeds(values=[0]),
        edits=[higan_pb2.ManipulateRequest.Edit(attribute="horizon", strength=3.0)], sweep=[0.0])))
    # strength 0 = no change, sweep empty = [1]: one frame, the same image as multiplier 0 of another strength
    assert len(edited.frames) == 1 and edited.frames[0].multiplier == 1.0
    assert edited.frames[0].image_png == unedited.frames[0].image_png
