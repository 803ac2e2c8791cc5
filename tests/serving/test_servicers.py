"""PyramidService over a real in-process gRPC server with a fake pipeline (no torch)."""

import asyncio
import io

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from servingkit import FakePipeline, generate, generate_raw, in_process_server, png_bytes

from serving.core.protos import pyramid_pb2 as pb, pyramid_pb2_grpc


def run(coro):
    return asyncio.run(coro)


def req(**fields) -> pb.GenerateRequest:
    base = dict(image=png_bytes(), level="conv2", num_samples=3, seed=1)
    base.update(fields)
    return pb.GenerateRequest(**base)


async def health_status(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_generate_returns_decodable_pngs_and_labels():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            return await generate(s.address, req(class_name="forest"))

    reply, error = run(scenario())
    assert error is None
    assert (len(reply.images), reply.width, reply.height, reply.level) == (3, 8, 8, "conv2")
    assert (reply.class_index, reply.class_name) == (2, "forest")
    for data in reply.images:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (8, 8))


def test_same_seed_same_bytes_other_seed_other_bytes():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            return [(await generate(s.address, req(seed=seed)))[0].images for seed in (4, 4, 5)]

    first, again, other = run(scenario())
    assert first == again and first != other


def test_request_id_is_echoed_or_made_up():
    async def scenario():
        async with in_process_server(FakePipeline()) as s, grpc.aio.insecure_channel(s.address) as channel:
            stub = pyramid_pb2_grpc.PyramidServiceStub(channel)
            mine = stub.Generate(req(), metadata=(("x-request-id", "abc-123"),))
            await mine
            made_up = stub.Generate(req(level="nope"))
            try:
                await made_up
            except grpc.aio.AioRpcError:
                pass
            return dict(await mine.initial_metadata()), dict(await made_up.initial_metadata())

    mine, made_up = run(scenario())
    assert mine["x-request-id"] == "abc-123"
    assert len(made_up["x-request-id"]) == 16  # also on failed calls


def test_malformed_and_wrong_typed_bytes_are_invalid_argument():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            garbage = await generate_raw(s.address, b"\xff\xff\xff")
            wrong_type = await generate_raw(s.address, b"\x08\x05")  # image sent as an integer
            good = await generate_raw(s.address, req().SerializeToString())
            return garbage, wrong_type, good

    (_, garbage), (_, wrong_type), (good, good_error) = run(scenario())
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert garbage.details().startswith("request: 3 bytes do not parse as a semgen.v1.GenerateRequest")
    assert wrong_type.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_type.details().startswith("image: wrong wire type")
    assert good_error is None and len(pb.GenerateResponse.FromString(good).images) == 3


def test_pipeline_value_error_is_invalid_argument():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            return await generate(s.address, req(seed=777))

    _, error = run(scenario())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "image: too small (2x2); need at least 8x8"


def test_unexpected_error_is_internal_without_details_and_server_stays_healthy():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            bug = await generate(s.address, req(seed=666))
            broken_contract = await generate(s.address, req(seed=888))
            after = await generate(s.address, req(seed=1))
            return bug, broken_contract, after, await health_status(s.address)

    (_, bug), (_, broken), (after, after_error), status = run(scenario())
    for error in (bug, broken):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details().startswith("internal error; see the server log for request id ")
        assert "secret" not in error.details() and "Traceback" not in error.details()
    assert after_error is None and len(after.images) == 3
    assert status == "SERVING"


def test_unavailable_until_the_model_is_attached():
    async def scenario():
        async with in_process_server(pipeline=None) as s:
            return await generate(s.address, req()), await health_status(s.address)

    (_, error), status = run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "model: still loading; retry shortly"
    assert status == "NOT_SERVING"


def test_server_limits_come_from_options():
    async def scenario():
        async with in_process_server(FakePipeline(), max_samples=2, max_image_bytes=500) as s:
            too_many = await generate(s.address, req(num_samples=3))
            too_big = await generate(s.address, req(image=png_bytes() + bytes(600)))
            return too_many, too_big

    (_, too_many), (_, too_big) = run(scenario())
    assert too_many.details() == "num_samples: must be between 1 and 2 (0 = 1), got 3"
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image:" in too_big.details() and "over the limit of 500 bytes" in too_big.details()


def test_reflection_lists_the_services():
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            # The reflection client is blocking; run it beside the server's event loop.
            def list_services():
                with grpc.insecure_channel(s.address) as channel:
                    db = ProtoReflectionDescriptorDatabase(channel)
                    return set(db.get_services()), db.FindFileContainingSymbol("semgen.v1.GenerateRequest").name
            return await asyncio.to_thread(list_services)

    services, proto_file = run(scenario())
    assert {"semgen.v1.PyramidService", "grpc.health.v1.Health"} <= services
    assert proto_file == "semgen/v1/pyramid.proto"


def test_long_user_strings_are_quoted_cut_short():
    """A 16 KB level or class name is an INVALID_ARGUMENT whose message quotes it cut short (echoed whole,
    it made the status metadata too large and the client saw RESOURCE_EXHAUSTED instead)."""
    long = "x" * 16384

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            return [await generate(s.address, r) for r in (
                req(level=long), req(class_name=long),
                req(level="", level_masks=[pb.LevelMask(level=long)]))]

    for reply, error in run(scenario()):
        assert reply is None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "… (16384 characters)" in error.details() and len(error.details()) < 400


def test_a_problem_in_every_list_element_makes_a_short_message():
    """Found by `semgen bench soak`: a Manipulate with 1,000 out-of-range sweep values was answered with one
    line per value, an 84 KB message the client could not receive (its own RESOURCE_EXHAUSTED instead)."""

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            return await generate(s.address, req(level="", level_masks=[pb.LevelMask(level=f"lv{i}")
                                                                        for i in range(2000)]))

    reply, error = run(scenario())
    assert reply is None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("level_masks[0].level: unknown level 'lv0'")
    assert "more problems" in error.details() and len(error.details()) < 4096


def test_health_and_reflection_answer_malformed_bytes_with_invalid_argument():
    """The standard services had grpc's own deserializers, which answer UNKNOWN to bytes that do not parse."""

    async def scenario():
        async with in_process_server(FakePipeline()) as s, grpc.aio.insecure_channel(s.address) as channel:
            codes = []
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                                        response_deserializer=None)
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                            request_serializer=None, response_deserializer=None)
            for call in (lambda: check(b"\xff\xff\xff", timeout=5),
                         lambda: _first(reflect(iter([b"\xff\xff\xff"]), timeout=5))):
                try:
                    await call()
                    codes.append("OK")
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            healthy = await health_status(s.address)  # well-formed calls still work
            return codes, healthy

    codes, healthy = run(scenario())
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2 and healthy == "SERVING"


async def _first(stream):
    async for reply in stream:
        return reply
