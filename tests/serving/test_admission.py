"""Admission by cost (issue 17, item 1): a request's decoded image and mask bytes are known from the headers
and bounded per request and server-wide, before anything is decoded."""

import asyncio
import io
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
from PIL import Image
from servingkit import FakePipeline, generate, in_process_server, png_bytes

from serving.core.admission import Admission, RequestCost
from serving.core.errors import InvalidInput, ResourceExhausted
from serving.core.protos import pyramid_pb2 as pb
from serving.options import ServeOptions

LEVELS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8")
MiB = 1024 * 1024


def big(fmt: str, mode: str) -> bytes:
    """A real 4096x4096 image (under the default pixel limit) of one colour: a few KB that decode to 48-64 MiB."""
    buf = io.BytesIO()
    Image.new(mode, (4096, 4096), 0).save(buf, format=fmt)
    return buf.getvalue()


class PeakRss:
    """The process's peak RSS growth while the block runs (sampled every 2 ms on a thread)."""

    def __enter__(self):
        self.process, self.base, self.peak, self.done = psutil.Process(), 0, 0, threading.Event()
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.growth = self.peak - self.base


def test_crafted_big_reference_and_seven_masks_are_refused_at_once_without_decoding():
    image, mask = big("JPEG", "RGB"), big("PNG", "L")
    assert len(image) < 1 * MiB and len(mask) < 1 * MiB
    request = pb.GenerateRequest(image=image, num_samples=1, seed=1, level_masks=[
        pb.LevelMask(level=level, mask=pb.Mask(png=mask)) for level in LEVELS])

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            await generate(s.address, pb.GenerateRequest(image=png_bytes(), level="conv2", num_samples=1, seed=1))
            with PeakRss() as rss:
                start = time.perf_counter()
                replies = await asyncio.gather(*(generate(s.address, request) for _ in range(4)))
                elapsed = time.perf_counter() - start
            return replies, elapsed, rss.growth, s.gateway.pyramid.admission.in_flight

    replies, elapsed, growth, in_flight = asyncio.run(scenario())
    for reply, error in replies:
        assert reply is None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("level_masks[0].mask.png: the request's images and masks decode to")
        assert "limit of 67108864 bytes per request" in error.details()
    assert growth < 100 * MiB, f"server RSS grew {growth / MiB:.0f} MiB for 4 crafted requests"
    # faster than decoding what they carry, timed here and now (a busy machine slows both alike)
    start = time.perf_counter()
    for data in (image, *[mask] * len(LEVELS)):
        Image.open(io.BytesIO(data)).load()
    decoding = time.perf_counter() - start
    assert elapsed < 4 * decoding and in_flight == 0, (elapsed, decoding)


def test_over_the_server_budget_is_refused_at_once_while_held_requests_proceed():
    image = png_bytes(64, 64)  # 64 * 64 * 3 = 12288 decoded bytes
    options = dict(max_image_pixels=64 * 64, max_request_decoded_bytes=12288, max_decoded_bytes_in_flight=2 * 12288)
    pipeline = FakePipeline()
    pipeline.gate = threading.Event()

    async def scenario():
        async with in_process_server(pipeline, **options) as s:
            admission = s.gateway.pyramid.admission
            request = pb.GenerateRequest(image=image, level="conv2", num_samples=1, seed=1)
            held = [asyncio.ensure_future(generate(s.address, request)) for _ in range(2)]
            while admission.in_flight < 2 * 12288:
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            refused = await asyncio.gather(*(generate(s.address, request) for _ in range(3)))
            refused_in = time.perf_counter() - start
            during = admission.in_flight
            pipeline.gate.set()
            return await asyncio.gather(*held), refused, refused_in, during, admission.in_flight

    held, refused, refused_in, during, after = asyncio.run(scenario())
    for reply, error in refused:
        assert reply is None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details().startswith("image: 12288 decoded bytes do not fit the server's budget now")
    assert refused_in < 2.0 and during == 2 * 12288
    for reply, error in held:
        assert error is None and len(reply.images) == 1
    assert after == 0


def test_normal_requests_still_work_and_release_their_bytes():
    mask = pb.Mask(png=png_bytes(24, 16, 255, mode="L"))
    request = pb.GenerateRequest(image=png_bytes(), num_samples=2, seed=1,
                                 level_masks=[pb.LevelMask(level="conv2", mask=mask), pb.LevelMask(level="fc8")])

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            reply, error = await generate(s.address, request)
            return reply, error, s.gateway.pyramid.admission

    reply, error, admission = asyncio.run(scenario())
    assert error is None and len(reply.images) == 2
    assert admission.in_flight == 0 and admission.budget == 512 * MiB


def test_mask_header_size_must_match_the_image_before_decoding():
    cost = RequestCost(64 * MiB)
    size = cost.image(png_bytes(24, 16), "image")
    assert size == (24, 16) and cost.total == 24 * 16 * 3
    with pytest.raises(InvalidInput, match=r"^level_masks\[0\]\.mask\.png: size 4096x4096 does not match the image's 24x16"):
        cost.mask(pb.Mask(png=big("PNG", "L")), "level_masks[0].mask", size)
    cost.mask(pb.Mask(png=png_bytes(24, 16, 0, mode="L")), "region", size)
    assert cost.total == 24 * 16 * 3 + 24 * 16 * 4


def test_admission_refuses_at_once_and_releases_on_error():
    admission = Admission(100)
    with admission.hold(60, "image"):
        with pytest.raises(ResourceExhausted, match=r"^image: 50 decoded bytes do not fit .*60 of 100 bytes in flight"):
            with admission.hold(50, "image"):
                pass
        assert admission.in_flight == 60
    with pytest.raises(RuntimeError):
        with admission.hold(100, "image"):
            raise RuntimeError("boom")
    assert admission.in_flight == 0


def test_options_keep_the_limits_consistent():
    opts = ServeOptions()
    assert (opts.limits.max_request_decoded_bytes, opts.max_decoded_bytes_in_flight) == (64 * MiB, 512 * MiB)
    assert opts.max_image_pixels * 3 <= opts.max_request_decoded_bytes
    opts.check()
    with pytest.raises(ValueError, match="--max-request-decoded-bytes must fit one image"):
        ServeOptions(max_request_decoded_bytes=1 * MiB).check()
    with pytest.raises(ValueError, match="must not be over --max-decoded-bytes-in-flight"):
        ServeOptions(max_decoded_bytes_in_flight=1 * MiB).check()
