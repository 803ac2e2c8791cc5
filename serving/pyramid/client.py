"""A small blocking Python client for the semgen gRPC API.

    from serving.pyramid.client import SemgenClient
    with SemgenClient("127.0.0.1:50051") as client:
        pngs = client.generate(open("ref.png", "rb").read(), level="conv5", num_samples=4, seed=0)
        reply = client.repaint(image_bytes, region=mask_png_bytes, level="conv5", num_samples=2, seed=0)
        reply = client.composite(image_bytes, object_bytes, box=(10, 8, 24, 24), level="conv4")

    semgen client pyramid generate --image ref.png --level conv5 --out samples/
    semgen client pyramid repaint --image ref.png --region mask.png --level conv5 --out samples/
    semgen client pyramid composite --image bg.png --object obj.png --box 10,8,24,24 --out samples/

Masks are single-channel PNG bytes (0 = off, 255 = on) or float arrays [H, W] in [0, 1], the size
of the image they go with. Errors arrive as `grpc.RpcError` with `.code()` and `.details()`
(e.g. INVALID_ARGUMENT, "level: unknown level 'conv9'; expected one of ...").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from semgen.options import REQUIRED, command, opt, subcommands, write_options
from serving.core.channel import ChannelClient, Connection
from serving.core.images import pil_images
from serving.core.protos import pyramid_pb2 as pb, pyramid_pb2_grpc

def mask_message(mask) -> pb.Mask:
    """PNG bytes or an array [H, W] of values in [0, 1] -> a Mask message."""
    if isinstance(mask, (bytes, bytearray)):
        return pb.Mask(png=bytes(mask))
    values = np.asarray(mask, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"mask: expected PNG bytes or a 2-D array, got shape {values.shape}")
    return pb.Mask(array=pb.MaskArray(width=values.shape[1], height=values.shape[0], values=values.ravel().tolist()))


class SemgenClient(ChannelClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pyramid = pyramid_pb2_grpc.PyramidServiceStub(self._channel)

    def generate_response(self, image_bytes: bytes, level: str | None = None, num_samples: int = 1, seed: int = 0,
                          class_index: int | None = None, class_name: str | None = None,
                          level_masks: dict | None = None, metadata=None) -> pb.GenerateResponse:
        """The full reply (images plus class, level, width, height).

        Give `level` for one whole level, or `level_masks` {level: None or mask} for several.
        """
        request = pb.GenerateRequest(image=image_bytes, level=level or "", num_samples=num_samples, seed=seed)
        for name, mask in (level_masks or {}).items():
            entry = request.level_masks.add(level=name)
            if mask is not None:
                entry.mask.CopyFrom(mask_message(mask))
        return self._call(self._pyramid.Generate, request, class_index, class_name, metadata)

    def generate(self, image_bytes: bytes, level: str | None = None, num_samples: int = 1, seed: int = 0,
                 class_index: int | None = None, class_name: str | None = None,
                 level_masks: dict | None = None) -> list[bytes]:
        """Generated images as PNG bytes, in sample order."""
        reply = self.generate_response(image_bytes, level, num_samples, seed, class_index, class_name, level_masks)
        return list(reply.images)

    def generate_images(self, image_bytes: bytes, level: str | None = None, num_samples: int = 1, seed: int = 0,
                        **options) -> list[Image.Image]:
        """`generate`'s images decoded (PIL, RGB, the model's size)."""
        return pil_images(self.generate(image_bytes, level, num_samples, seed, **options))

    def repaint(self, image_bytes: bytes, region, level: str = "conv5", num_samples: int = 1, seed: int = 0,
                class_index: int | None = None, class_name: str | None = None, metadata=None) -> pb.GenerateResponse:
        """Regenerate `region` (mask, 1 = repaint) of the image from `level`."""
        request = pb.RepaintRequest(image=image_bytes, region=mask_message(region), level=level,
                                    num_samples=num_samples, seed=seed)
        return self._call(self._pyramid.Repaint, request, class_index, class_name, metadata)

    def composite(self, image_bytes: bytes, object_bytes: bytes, box: tuple[int, int, int, int],
                  level: str = "conv4", num_samples: int = 1, seed: int = 0, class_index: int | None = None,
                  class_name: str | None = None, metadata=None) -> pb.GenerateResponse:
        """Implant the object image at box = (left, top, width, height) of the image. At the default
        64 px model conv4 keeps the object recognisable; conv5 re-draws it more freely."""
        left, top, width, height = box
        request = pb.CompositeRequest(image=image_bytes, object_image=object_bytes, level=level,
                                      box=pb.Box(left=left, top=top, width=width, height=height),
                                      num_samples=num_samples, seed=seed)
        return self._call(self._pyramid.Composite, request, class_index, class_name, metadata)

    def _call(self, rpc, request, class_index, class_name, metadata):
        if class_index is not None and class_name is not None:
            raise ValueError("give class_index or class_name, not both")
        if class_index is not None:
            request.class_index = class_index
        if class_name is not None:
            request.class_name = class_name
        return rpc(request, timeout=self.timeout, metadata=metadata, wait_for_ready=self.wait_for_ready)


# ---- command line: `semgen client pyramid ...` ----------------------------------------------

def _box(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected left,top,width,height (four integers), got {text!r}")
    return box


@dataclass(frozen=True, kw_only=True)
class PyramidCommand(Connection):
    image: str = opt(REQUIRED, "reference / background PNG or JPEG")
    level: str | None = opt(None, "the classifier level to generate from")
    num_samples: int = opt(4, "images to generate")
    seed: int = opt(0, "seed of the first image")
    class_index: int | None = opt(None, "generate this class instead of the reference's", group="class")
    class_name: str | None = opt(None, "generate this class (by name) instead of the reference's", group="class")
    out: str = opt("samples", "where the images (and these options) go")
    timeout: float = opt(60.0, "seconds before the call fails with DEADLINE_EXCEEDED")


@dataclass(frozen=True, kw_only=True)
class Generate(PyramidCommand):
    level: str | None = opt(None, "generate from this whole level (conv5 when no --mask is given)")
    mask: tuple[str, ...] = opt((), "pass LEVEL (under MASK.png if given); repeat for several levels", append=True,
                                metavar="LEVEL[=MASK.png]")


@dataclass(frozen=True, kw_only=True)
class Repaint(PyramidCommand):
    level: str = opt("conv5", "repaint from this level")
    region: str = opt(REQUIRED, "mask PNG, white = repaint")


@dataclass(frozen=True, kw_only=True)
class Composite(PyramidCommand):
    level: str = opt("conv4", "blend from this level")
    object: str = opt(REQUIRED, "object PNG or JPEG")
    box: tuple[int, int, int, int] = opt(REQUIRED, "left,top,width,height in pixels of --image", parse=_box)


def add_pyramid_commands(parser: argparse.ArgumentParser) -> None:
    ops = subcommands(parser, dest="op")
    command(ops.add_parser("generate", help="samples from a reference's features"), Generate, run_pyramid_command)
    command(ops.add_parser("repaint", help="regenerate a masked region"), Repaint, run_pyramid_command)
    command(ops.add_parser("composite", help="implant an object image into a box"), Composite, run_pyramid_command)


def run_pyramid_command(o: PyramidCommand) -> int:
    op = {Generate: "generate", Repaint: "repaint", Composite: "composite"}[type(o)]
    image = Path(o.image).read_bytes()
    common = dict(num_samples=o.num_samples, seed=o.seed, class_index=o.class_index, class_name=o.class_name)
    with SemgenClient(o.address, timeout=o.timeout, **o.channel_kwargs()) as client:
        try:
            if isinstance(o, Generate):
                masks = {}
                for item in o.mask:
                    level, _, path = item.partition("=")
                    if level in masks:
                        print(f"error: --mask: level {level} is given twice", file=sys.stderr)
                        return 2
                    masks[level] = Path(path).read_bytes() if path else None
                level = o.level or (None if masks else "conv5")
                reply = client.generate_response(image, level, level_masks=masks, **common)
            elif isinstance(o, Repaint):
                reply = client.repaint(image, Path(o.region).read_bytes(), o.level, **common)
            else:
                reply = client.composite(image, Path(o.object).read_bytes(), o.box, o.level, **common)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(reply.images):
        (out / f"{op}_{reply.level}_seed{o.seed}_{i:02d}.png").write_bytes(png)
    write_options(o, out, f"{op}_options")
    print(f"{len(reply.images)} images {reply.width}x{reply.height} of class {reply.class_index} "
          f"({reply.class_name}) in {out}")
    return 0
