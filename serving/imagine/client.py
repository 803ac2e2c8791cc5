"""A small blocking Python client for semgen.v1.ImagineService, and `semgen client imagine ...`.

    from serving.imagine.client import ImagineClient, job_result
    with ImagineClient("127.0.0.1:50051", timeout=600) as client:
        info = client.info()                                   # image size, classes, layers, schedule
        events = client.imagine(open("ref.png", "rb").read(), num_variations=4, seed=0, position=(0.3, 0.6))
        result = job_result(events, on_progress=lambda p: print(p.stage, p.iteration, dict(p.losses)))
        # result.images_png, result.target_class_name, result.predicted_class; events.cancel() stops the job

    semgen client imagine --reference ref.png --variations 4 --seed 0 --out-dir variations/
    semgen client imagine --reference ref.png --position 0.3,0.6 --stage1 100 --stage2 100 --out-dir v/
    semgen client imagine --reference ref.png --shape-image shape.png --out-dir v/
    semgen client imagine --reference ref.png --style-content content.png --out-dir v/
    semgen client imagine --reference ref.png --query q.png --query-region qm.png --reference-region rm.png --out-dir v/
    semgen client imagine info

Images go as PNG/JPEG bytes (or uint8 arrays [H, W, 3]); region masks as single-channel PNGs
(nonzero = in the region; or bool arrays [H, W]) the size of their image. Errors arrive as
`grpc.RpcError`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from semgen.options import command, opt, write_options
from serving.core.channel import ChannelClient, Connection, follow_job, job_result  # noqa: F401 (job_result: part of this API)
from serving.core.protos import imagine_pb2 as pb, imagine_pb2_grpc


def image_png(image) -> bytes:
    """Encoded image bytes (passed through) or a uint8 array [H, W, 3] -> PNG bytes."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    return _png(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB"))


def region_png(region) -> bytes:
    """Mask bytes (passed through) or an array [H, W] (nonzero = in the region) -> a PNG of 0 and 255."""
    if isinstance(region, (bytes, bytearray)):
        return bytes(region)
    values = np.asarray(region)
    if values.ndim != 2:
        raise ValueError(f"region: expected PNG bytes or a 2-D array, got shape {values.shape}")
    return _png(Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8), "L"))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ImagineClient(ChannelClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stub = imagine_pb2_grpc.ImagineServiceStub(self._channel)

    def info(self, timeout: float | None = None, metadata=None) -> pb.ImagineInfo:
        return self._stub.GetImagineInfo(pb.GetImagineInfoRequest(), timeout=timeout or self.timeout,
                                         metadata=metadata, wait_for_ready=self.wait_for_ready)

    def imagine(self, reference, num_variations: int = 0, seed: int = 0, layers=(), stage1_iterations: int | None = None,
                stage2_iterations: int | None = None, preview_every: int = 0, position=None, shape=None, shape_layers=(),
                style_content=None, query=None, query_region=None, reference_region=None,
                timeout: float | None = None, metadata=None):
        """The ImagineEvent stream (iterate it, or pass it to `job_result`; `.cancel()` stops the job).

        position: (x, y) or (x, y, sigma), fractions of the image. Give at most one of `shape`
        (an image), `style_content` (an image) and `query` (an image, with `query_region` and
        `reference_region`). Zeros mean the server's documented defaults; stage iterations left at None take the
        default schedule's, 0 skips that stage.
        """
        request = pb.ImagineRequest(reference_png=image_png(reference), num_variations=num_variations, seed=seed,
                                    layers=list(layers), stage1_iterations=stage1_iterations,
                                    stage2_iterations=stage2_iterations, preview_every=preview_every)
        if position is not None:
            request.position.CopyFrom(pb.ImagineRequest.Position(**dict(zip(("x", "y", "sigma"), position))))
        if shape is not None:
            request.shape.CopyFrom(pb.ImagineRequest.Shape(shape_png=image_png(shape), shape_layers=list(shape_layers)))
        if style_content is not None:
            request.style.CopyFrom(pb.ImagineRequest.Style(content_png=image_png(style_content)))
        if query is not None or query_region is not None or reference_region is not None:
            request.counterfactual.CopyFrom(pb.ImagineRequest.Counterfactual(
                query_png=b"" if query is None else image_png(query),
                query_region_png=b"" if query_region is None else region_png(query_region),
                reference_region_png=b"" if reference_region is None else region_png(reference_region)))
        return self._stub.Imagine(request, timeout=timeout or self.timeout, metadata=metadata,
                                  wait_for_ready=self.wait_for_ready)


# ---- command line: `semgen client imagine ...` ----------------------------------------------

def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _position(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,SIGMA (fractions, e.g. 0.3,0.6), got {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class ImagineCommand(Connection):
    what: str | None = opt(None, "info: the server's classifier, layers and default schedule", positional=True,
                           nargs="?", choices=("info",))
    timeout: float = opt(600.0, "seconds before the job is stopped (DEADLINE_EXCEEDED)")
    reference: str | None = opt(None, "the reference image (PNG or JPEG); required unless `info`")
    variations: int = opt(4, "how many variations")
    seed: int = opt(0, "seed of the first variation")
    layers: tuple[str, ...] = opt((), "comma-separated classifier layers to match (default: the server's)",
                                  parse=_names)
    position: tuple[float, ...] | None = opt(None, "put the object at X,Y (fractions of width and height, 0..1); "
                                                   "SIGMA = blob width (0.15)", parse=_position, metavar="X,Y[,SIGMA]")
    shape_image: str | None = opt(None, "take the shape (deep layers) from this image")
    shape_layers: tuple[str, ...] = opt((), "layers matched to --shape-image (default: the deep layers)", parse=_names)
    style_content: str | None = opt(None, "style transfer: start from this content image")
    query: str | None = opt(None, "counterfactual: the image whose --query-region is replaced")
    query_region: str | None = opt(None, "counterfactual: mask PNG of --query (nonzero = replace)")
    reference_region: str | None = opt(None, "counterfactual: mask PNG of --reference (nonzero = take)")
    stage1: int | None = opt(None, "stage-1 iterations (0: skip stage 1; default: the server's schedule, see "
                                   "`semgen client imagine info`)")
    stage2: int | None = opt(None, "stage-2 iterations (0: skip stage 2; default: the server's schedule)")
    preview_every: int = opt(0, "write previews of all variations every N iterations")
    preview_dir: str | None = opt(None, "where previews go (default: OUT_DIR/previews)")
    out_dir: str = opt("imagine", "where the variations (and these options) go")


def add_imagine_commands(parser: argparse.ArgumentParser) -> None:
    command(parser, ImagineCommand, run_imagine_command)


def run_imagine_command(o: ImagineCommand) -> int:
    out = Path(o.out_dir)
    with ImagineClient(o.address, timeout=o.timeout, **o.channel_kwargs()) as client:
        try:
            if o.what == "info":
                _print_info(client.info())
                return 0
            if o.reference is None:
                print("error: --reference is required (or run `semgen client imagine info`)", file=sys.stderr)
                return 2
            events = client.imagine(
                Path(o.reference).read_bytes(), o.variations, o.seed, o.layers, o.stage1, o.stage2, o.preview_every,
                o.position, _read(o.shape_image), o.shape_layers, _read(o.style_content), _read(o.query),
                _read(o.query_region), _read(o.reference_region))
            result = _follow(events, Path(o.preview_dir) if o.preview_dir else out / "previews")
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    _write(result, out)
    write_options(o, out, "imagine_options")
    return 0


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _print_info(info: pb.ImagineInfo) -> None:
    print(f"image size: {info.image_size}x{info.image_size}")
    print(f"classes: {', '.join(info.class_names)}")
    print(f"layers: {', '.join(info.layer_names)} (default {', '.join(info.default_layers)}; "
          f"shallow {', '.join(info.shallow_layers)}; deep {', '.join(info.deep_layers)})")
    print(f"default schedule: {info.default_stage1_iterations} + {info.default_stage2_iterations} iterations")


def _follow(events, preview_dir: Path) -> pb.ImagineResult:
    """Show stage, iteration and losses (and write the previews); Ctrl-C cancels the job on the server."""

    def show(bar, p: pb.ImagineProgress) -> None:
        bar.total = p.total
        bar.set_description(f"imagine stage {p.stage}")
        bar.update(p.iteration - bar.n)
        bar.set_postfix({name: f"{value:.3g}" for name, value in sorted(p.losses.items())})
        for k, png in enumerate(p.preview_png):
            preview_dir.mkdir(parents=True, exist_ok=True)
            (preview_dir / f"preview_{p.iteration:05d}_{k:02d}.png").write_bytes(png)

    return follow_job(events, "imagine", show)


def _write(result: pb.ImagineResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for k, png in enumerate(result.images_png):
        (out / f"variation_{k:02d}.png").write_bytes(png)
    summary = dict(target_class=result.target_class, target_class_name=result.target_class_name,
                   predicted_class=list(result.predicted_class), seeds=[int(s) for s in result.seeds])
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    kept = sum(c == result.target_class for c in result.predicted_class)
    print(f"{len(result.images_png)} variations of class {result.target_class} ({result.target_class_name}) "
          f"in {out}; {kept} classified as that class")
