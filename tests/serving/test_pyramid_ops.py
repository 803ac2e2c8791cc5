"""Per-level masks, Repaint and Composite over a real in-process gRPC server with a fake pipeline:
what reaches the pipeline, and the INVALID_ARGUMENT answers for bad masks and boxes."""

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image
from servingkit import FakePipeline, call, in_process_server, png_bytes

from serving.pyramid.client import mask_message
from serving.core.protos import pyramid_pb2 as pb

W, H = 24, 16  # the size of png_bytes()


def mask_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((array * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def region(top=4, left=6, h=8, w=10, height=H, width=W) -> np.ndarray:
    m = np.zeros((height, width), np.float32)
    m[top : top + h, left : left + w] = 1
    return m


def run_calls(*calls):
    """Run (method, request) pairs on one server; returns the results, the pipeline and the final health."""
    async def scenario():
        pipeline = FakePipeline()
        async with in_process_server(pipeline) as s:
            results = [await call(s.address, method, request) for method, request in calls]
            still_ok = await call(s.address, "Generate", pb.GenerateRequest(image=png_bytes(), level="conv1",
                                                                            num_samples=1, seed=0))
            return results, pipeline, still_ok[1] is None

    return asyncio.run(scenario())


def repaint_req(**fields):
    base = dict(image=png_bytes(), region=mask_message(region()), level="conv5", num_samples=2, seed=3)
    return pb.RepaintRequest(**(base | fields))


def composite_req(**fields):
    base = dict(image=png_bytes(), object_image=png_bytes(9, 9, (0, 255, 0)), level="conv4", num_samples=2,
                seed=3, box=pb.Box(left=2, top=3, width=12, height=10))
    return pb.CompositeRequest(**(base | fields))


def test_level_masks_reach_the_pipeline_as_arrays():
    half = np.zeros((H, W), np.float32)
    half[:, : W // 2] = 1
    request = pb.GenerateRequest(image=png_bytes(), num_samples=2, seed=1, level_masks=[
        pb.LevelMask(level="conv2", mask=pb.Mask(png=mask_png(half))),
        pb.LevelMask(level="fc7")])
    [(reply, error)], pipeline, _ = run_calls(("Generate", request))
    assert error is None and reply.level == "fc7" and len(reply.images) == 2
    op, args = pipeline.calls[0]
    assert op == "generate" and set(args["levels"]) == {"conv2", "fc7"} and args["levels"]["fc7"] is None
    assert np.array_equal(args["levels"]["conv2"], half)


def test_repaint_with_png_or_array_region():
    [(png_reply, e1), (array_reply, e2)], pipeline, _ = run_calls(
        ("Repaint", repaint_req(region=pb.Mask(png=mask_png(region())))),
        ("Repaint", repaint_req()))
    assert e1 is None and e2 is None and png_reply.images == array_reply.images and png_reply.level == "conv5"
    for op, args in pipeline.calls[:2]:
        assert op == "repaint" and np.array_equal(args["region"], region())


def test_composite_passes_decoded_object_and_box():
    [(reply, error)], pipeline, _ = run_calls(("Composite", composite_req(class_name="forest")))
    assert error is None and (reply.class_name, len(reply.images), reply.level) == ("forest", 2, "conv4")
    op, args = pipeline.calls[0]
    assert op == "composite" and args["box"] == (2, 3, 12, 10)
    assert args["object_image"].shape == (9, 9, 3) and (args["object_image"][..., 1] == 255).all()


BAD = {
    "mask-size": ("Repaint", repaint_req(region=mask_message(region(height=5, width=5))),
                  "region: size 5x5 does not match the image's 24x16"),
    "empty-region": ("Repaint", repaint_req(region=mask_message(np.zeros((H, W)))), "region: empty"),
    "no-region": ("Repaint", pb.RepaintRequest(image=png_bytes(), level="conv5", num_samples=1), "region: missing"),
    "bad-mask-png": ("Repaint", repaint_req(region=pb.Mask(png=b"nope")), "region.png: not a PNG or JPEG"),
    "short-array": ("Repaint", repaint_req(region=pb.Mask(array=pb.MaskArray(width=W, height=H, values=[1.0]))),
                    "region.array: 1 values do not fill 24x16"),
    "array-range": ("Repaint", repaint_req(region=pb.Mask(array=pb.MaskArray(width=1, height=1, values=[3.0]))),
                    "region.array: values must be in [0, 1]"),
    "repaint-level": ("Repaint", repaint_req(level="conv0"), "level: unknown level 'conv0'"),
    "box-outside": ("Composite", composite_req(box=pb.Box(left=20, top=0, width=8, height=8)),
                    "box: (20, 0, 8, 8) is not inside the 24x16 image"),
    "box-empty": ("Composite", composite_req(box=pb.Box(left=0, top=0, width=0, height=8)),
                  "box: width and height must be >= 1, got 0x8"),
    "box-missing": ("Composite", pb.CompositeRequest(image=png_bytes(), object_image=png_bytes(), level="conv5",
                                                     num_samples=1), "box: missing"),
    "no-object": ("Composite", composite_req(object_image=b""), "object_image: empty"),
    "level-and-masks": ("Generate", pb.GenerateRequest(image=png_bytes(), level="conv1", num_samples=1,
                                                       level_masks=[pb.LevelMask(level="conv2")]),
                        "level: give level or level_masks, not both"),
    "level-twice": ("Generate", pb.GenerateRequest(image=png_bytes(), num_samples=1, level_masks=[
        pb.LevelMask(level="conv2"), pb.LevelMask(level="conv2")]), "level_masks[1].level: 'conv2' is given twice"),
    "level-mask-size": ("Generate", pb.GenerateRequest(image=png_bytes(), num_samples=1, level_masks=[
        pb.LevelMask(level="conv2", mask=mask_message(np.ones((3, 3))))]),
        "level_masks[0].mask: size 3x3 does not match the image's 24x16"),
}


@pytest.mark.parametrize("method, request_, message", BAD.values(), ids=BAD.keys())
def test_bad_masks_and_boxes_are_invalid_argument(method, request_, message):
    [(_, error)], pipeline, healthy = run_calls((method, request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert healthy and [op for op, _ in pipeline.calls] == ["generate"]  # only the follow-up call ran


def test_a_16_bit_png_mask_keeps_its_range():
    buf = io.BytesIO()
    Image.fromarray((region() * 65535).astype(np.uint16)).save(buf, format="PNG")
    [(_, error)], pipeline, _ = run_calls(("Repaint", repaint_req(region=pb.Mask(png=buf.getvalue()))))
    assert error is None and np.array_equal(pipeline.calls[0][1]["region"], region())
