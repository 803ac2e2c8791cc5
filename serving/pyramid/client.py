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
from pathlib import Path

import grpc
import numpy as np

from serving.core.channel import ChannelClient
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

def add_pyramid_commands(parser: argparse.ArgumentParser) -> None:
    ops = parser.add_subparsers(dest="op", required=True)
    for op, help_text in (("generate", "samples from a reference's features"),
                          ("repaint", "regenerate a masked region"),
                          ("composite", "implant an object image into a box")):
        p = ops.add_parser(op, help=help_text)
        p.add_argument("--address", default="127.0.0.1:50051")
        p.add_argument("--image", type=Path, required=True, help="reference / background PNG or JPEG")
        p.add_argument("--level", default={"generate": None, "repaint": "conv5", "composite": "conv4"}[op])
        p.add_argument("--num-samples", type=int, default=4)
        p.add_argument("--seed", type=int, default=0)
        relabel = p.add_mutually_exclusive_group()
        relabel.add_argument("--class-index", type=int, default=None)
        relabel.add_argument("--class-name", default=None)
        p.add_argument("--out", type=Path, default=Path("samples"))
        p.add_argument("--timeout", type=float, default=60.0)
        if op == "generate":
            p.add_argument("--mask", action="append", default=[], metavar="LEVEL[=MASK.png]",
                           help="pass LEVEL (under MASK.png if given); repeat for several levels")
        elif op == "repaint":
            p.add_argument("--region", type=Path, required=True, help="mask PNG, white = repaint")
        else:
            p.add_argument("--object", type=Path, required=True, help="object PNG or JPEG")
            p.add_argument("--box", required=True, type=_box, help="left,top,width,height in pixels of --image")
        p.set_defaults(func=run_pyramid_command)


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected left,top,width,height (four integers), got {text!r}")
    return box


def run_pyramid_command(args) -> int:
    image = args.image.read_bytes()
    common = dict(num_samples=args.num_samples, seed=args.seed, class_index=args.class_index,
                  class_name=args.class_name)
    with SemgenClient(args.address, timeout=args.timeout) as client:
        try:
            if args.op == "generate":
                masks = {}
                for item in args.mask:
                    level, _, path = item.partition("=")
                    if level in masks:
                        print(f"error: --mask: level {level} is given twice", file=sys.stderr)
                        return 2
                    masks[level] = Path(path).read_bytes() if path else None
                if not masks and not args.level:
                    args.level = "conv5"
                reply = client.generate_response(image, args.level, level_masks=masks, **common)
            elif args.op == "repaint":
                reply = client.repaint(image, args.region.read_bytes(), args.level, **common)
            else:
                reply = client.composite(image, args.object.read_bytes(), args.box, args.level, **common)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(reply.images):
        (args.out / f"{args.op}_{reply.level}_seed{args.seed}_{i:02d}.png").write_bytes(png)
    print(f"{len(reply.images)} images {reply.width}x{reply.height} of class {reply.class_index} "
          f"({reply.class_name}) in {args.out}")
    return 0
