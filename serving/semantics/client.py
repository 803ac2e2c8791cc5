"""A small blocking Python client for semgen.v1.SemanticsService, and `semgen client semantics ...`.

    from serving.semantics.client import SemanticsClient, job_result, latents_array, mask_array
    with SemanticsClient("127.0.0.1:50051") as client:
        reply = client.sample(seeds=[1, 2, 3], head="lse")          # images, latents, masks
        masks = client.segment(reply.latents, head="segmenter").masks
        client.fit_head("sky-water", reply.latents, [mask_a, mask_b, mask_c], ["other", "sky", "water"])
        events = client.sample_conditional(target_png, head="sky-water", num_samples=4)
        result = job_result(events, on_progress=lambda p: print(p.iteration, p.loss))  # events.cancel() stops it
        edited = job_result(client.edit(latents_array(reply.latents)[:1], edited_mask, head="lse"))

    semgen client semantics sample --seeds 1,2,3 --head lse --out samples/
    semgen client semantics segment --latents samples/latents.npy --head segmenter --out masks/
    semgen client semantics fit-head --name mine --latents samples/latents.npy --masks a.png b.png c.png \\
        --class-names other,sky,water
    semgen client semantics list-heads
    semgen client semantics sample-conditional --target mask.png --head lse --num-samples 4 --out scs/
    semgen client semantics edit --latents samples/latents.npy --index 0 --target edited.png --head lse --out sie/

Masks are single-channel 8-bit PNGs of class indices; the CLI writes them with a colour palette
(mode P: the pixel values are still the class indices), so they are both viewable and valid
input. Latents are saved as .npy, float32 [N, num_ws, w_dim]. Errors arrive as `grpc.RpcError`.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from semgen.options import REQUIRED, command, opt, subcommands, write_options
from serving.core.channel import ChannelClient, Connection, follow_job, job_result  # noqa: F401 (job_result: part of this API)
from serving.core.latents import latents_array, latents_message  # noqa: F401 (latents_array: part of this API)
from serving.core.protos import semantics_pb2 as pb, semantics_pb2_grpc

OUT_HELP = "where the images, masks, latents (and these options) go"
HEAD_HELP = "a head from list-heads, or segmenter"


def mask_array(png: bytes) -> np.ndarray:
    """A mask PNG -> uint8 [H, W] class indices."""
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.uint8)


def mask_png(mask) -> bytes:
    """uint8 [H, W] class indices (or PNG bytes, passed through) -> a palette PNG of those indices."""
    if isinstance(mask, (bytes, bytearray)):
        return bytes(mask)
    values = np.ascontiguousarray(mask, dtype=np.uint8)
    if values.ndim != 2:
        raise ValueError(f"mask: expected PNG bytes or a 2-D array of class indices, got shape {values.shape}")
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    image.putpalette(PALETTE)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _palette() -> list[int]:
    # Well-spread hues (golden-ratio steps) so neighbouring class indices look different.
    colors = []
    for i in range(256):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.65, 0.95 - 0.3 * (i % 2))
        colors += [round(r * 255), round(g * 255), round(b * 255)]
    return colors


PALETTE = _palette()


class SemanticsClient(ChannelClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stub = semantics_pb2_grpc.SemanticsServiceStub(self._channel)

    def sample(self, seeds=None, latents=None, head: str = "", truncation_psi: float | None = None,
               metadata=None) -> pb.SampleResponse:
        """Images for `seeds` or `latents`, with latents, and masks by `head` if given."""
        request = pb.SampleRequest(seeds=list(seeds or ()), head=head, truncation_psi=truncation_psi)
        if latents is not None:
            request.latents.CopyFrom(latents_message(latents))
        return self._unary(self._stub.Sample, request, None, metadata)

    def segment(self, latents, head: str, metadata=None) -> pb.SegmentResponse:
        return self._unary(self._stub.Segment, pb.SegmentRequest(latents=latents_message(latents), head=head),
                           None, metadata)

    def fit_head(self, name: str, latents, masks, class_names, seed: int = 0, iterations: int = 0,
                 replace: bool = False, timeout: float | None = None, metadata=None) -> pb.HeadInfo:
        """Fit and save a few-shot head; `masks` are PNG bytes or uint8 arrays, one per latent.
        iterations 0 = the paper's schedule (up to 2000 steps: give a generous `timeout`)."""
        request = pb.FitHeadRequest(name=name, latents=latents_message(latents), masks=[mask_png(m) for m in masks],
                                    class_names=list(class_names), seed=seed, iterations=iterations, replace=replace)
        return self._unary(self._stub.FitHead, request, timeout, metadata)

    def list_heads(self, metadata=None) -> list[pb.HeadInfo]:
        return list(self._unary(self._stub.ListHeads, pb.ListHeadsRequest(), None, metadata).heads)

    def sample_conditional(self, target_mask, head: str, num_samples: int = 1, seed: int = 0, n_init: int = 0,
                           iterations: int = 0, learning_rate: float = 0.0, space: str = "",
                           truncation_psi: float | None = None, preview_every: int = 0,
                           timeout: float | None = None, metadata=None):
        """The JobEvent stream (iterate it, or pass it to `job_result`; `.cancel()` stops the job).
        Zeros mean the server's documented defaults."""
        request = pb.SampleConditionalRequest(
            target_mask=mask_png(target_mask), head=head, num_samples=num_samples, seed=seed, n_init=n_init,
            iterations=iterations, learning_rate=learning_rate, space=space, truncation_psi=truncation_psi,
            preview_every=preview_every)
        return self._stub.SampleConditional(request, timeout=timeout or self.timeout, metadata=metadata,
                                            wait_for_ready=self.wait_for_ready)

    def edit(self, latent, target_mask, head: str, iterations: int = 0, learning_rate: float = 0.0,
             space: str = "", preview_every: int = 0, timeout: float | None = None, metadata=None):
        """The JobEvent stream of EditSemantics for one latent [1, num_ws, w_dim] (or [1, w_dim])."""
        request = pb.EditSemanticsRequest(
            latent=latents_message(latent), target_mask=mask_png(target_mask), head=head, iterations=iterations,
            learning_rate=learning_rate, space=space, preview_every=preview_every)
        return self._stub.EditSemantics(request, timeout=timeout or self.timeout, metadata=metadata,
                                        wait_for_ready=self.wait_for_ready)

    def _unary(self, rpc, request, timeout, metadata):
        return rpc(request, timeout=timeout or self.timeout, metadata=metadata, wait_for_ready=self.wait_for_ready)


# ---- command line: `semgen client semantics ...` --------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SemanticsCall(Connection):
    timeout: float = opt(120.0, "seconds before the call fails with DEADLINE_EXCEEDED")


@dataclass(frozen=True, kw_only=True)
class ListHeads(SemanticsCall):
    pass


@dataclass(frozen=True, kw_only=True)
class Sample(SemanticsCall):
    seeds: tuple[int, ...] | None = opt(None, "comma-separated seeds, e.g. 1,2,3", group="source", required=True)
    latents: str | None = opt(None, ".npy latents [N, num_ws, w_dim] or [N, w_dim]", group="source")
    psi: float | None = opt(None, "truncation in [0, 1] for --seeds")
    head: str = opt("", "also return masks by this head (see list-heads)")
    out: str = opt("samples", OUT_HELP)


@dataclass(frozen=True, kw_only=True)
class Segment(SemanticsCall):
    latents: str = opt(REQUIRED, ".npy latents, e.g. from `sample`")
    head: str = opt(REQUIRED, HEAD_HELP)
    out: str = opt("samples", OUT_HELP)


@dataclass(frozen=True, kw_only=True)
class FitHead(SemanticsCall):
    timeout: float = opt(600.0, "seconds before the call fails with DEADLINE_EXCEEDED")
    latents: str = opt(REQUIRED, ".npy latents, e.g. from `sample`")
    name: str = opt(REQUIRED, "[a-z0-9][a-z0-9_-]*, up to 64 characters")
    masks: tuple[str, ...] = opt(REQUIRED, "one class-index PNG per latent", nargs="+")
    class_names: tuple[str, ...] = opt(REQUIRED, "e.g. other,sky,water")
    seed: int = opt(0, "seed of the fit")
    iterations: int = opt(0, "0 = the paper's schedule (500-2000)")
    replace: bool = opt(False, "overwrite a user head of that name")


@dataclass(frozen=True, kw_only=True)
class Optimise(SemanticsCall):  # sample-conditional and edit
    head: str = opt(REQUIRED, HEAD_HELP)
    target: str = opt(REQUIRED, "target mask: PNG of class indices")
    iterations: int = opt(0, "0 = 50")
    lr: float = opt(0.0, "0 = 0.01")
    space: str = opt("", "latent space optimised: w (one latent for all layers) or w+ (one per layer; '' = w+)",
                     choices=("", "w", "w+"))
    preview_every: int = opt(0, "write a preview every N iterations")
    out: str = opt("samples", OUT_HELP)


@dataclass(frozen=True, kw_only=True)
class SampleConditional(Optimise):
    num_samples: int = opt(4, "images to make")
    seed: int = opt(0, "seed of the first image")
    n_init: int = opt(0, "random latents tried per sample; 0 = 100")
    psi: float | None = opt(None, "truncation in [0, 1] of the candidates")


@dataclass(frozen=True, kw_only=True)
class Edit(Optimise):
    latents: str = opt(REQUIRED, ".npy latents, e.g. from `sample`")
    index: int = opt(0, "which latent of --latents to edit")


COMMANDS = {  # op -> (options, help)
    "sample": (Sample, "images, latents and masks from seeds or latents"),
    "segment": (Segment, "masks of the images that latents make"),
    "fit-head": (FitHead, "fit a few-shot head from latents and masks you drew"),
    "list-heads": (ListHeads, "heads the server knows, with class names"),
    "sample-conditional": (SampleConditional, "images whose segmentation follows a target mask (SCS)"),
    "edit": (Edit, "edit an image (its latent) towards a target mask (SIE)"),
}


def add_semantics_commands(parser: argparse.ArgumentParser) -> None:
    ops = subcommands(parser, dest="op")
    for op, (options, help_text) in COMMANDS.items():
        command(ops.add_parser(op, help=help_text), options, run_semantics_command)


def run_semantics_command(o: SemanticsCall) -> int:
    latents = np.load(o.latents) if getattr(o, "latents", None) else None
    with SemanticsClient(o.address, timeout=o.timeout, **o.channel_kwargs()) as client:
        try:
            if isinstance(o, ListHeads):
                for h in client.list_heads():
                    origin = "bundled" if h.bundled else f"user, {h.shots} shots"
                    print(f"{h.name}\t{h.kind}\t{origin}\t{', '.join(h.class_names)}")
                return 0
            if isinstance(o, FitHead):
                head = client.fit_head(o.name, latents, [Path(m).read_bytes() for m in o.masks], list(o.class_names),
                                       o.seed, o.iterations, o.replace)
                print(f"head {head.name} ({head.kind}, {head.shots} shots): {', '.join(head.class_names)}")
                return 0
            out = Path(o.out)
            if isinstance(o, Sample):
                reply = client.sample(o.seeds, latents, o.head, o.psi)
            elif isinstance(o, Segment):
                reply = client.segment(latents, o.head)
            elif isinstance(o, SampleConditional):
                reply = _follow(client.sample_conditional(
                    Path(o.target).read_bytes(), o.head, o.num_samples, o.seed, o.n_init, o.iterations, o.lr,
                    o.space, o.psi, o.preview_every), out)
            else:
                reply = _follow(client.edit(latents[o.index:o.index + 1], Path(o.target).read_bytes(), o.head,
                                            o.iterations, o.lr, o.space, o.preview_every), out)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    _write(reply, out)
    write_options(o, out, {cls: op for op, (cls, _) in COMMANDS.items()}[type(o)] + "_options")
    return 0


def _follow(events, out: Path) -> pb.SampleResponse:
    """Show the job's progress (and write its previews); Ctrl-C cancels the job on the server."""

    def show(bar, p):
        bar.total = p.total_iterations
        bar.update(p.iteration - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}")
        if p.preview:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"preview_{p.iteration:04d}.png").write_bytes(p.preview)

    return follow_job(events, "optimising", show)


def _write(reply, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(getattr(reply, "images", ())):
        (out / f"image_{i:02d}.png").write_bytes(png)
    for i, png in enumerate(reply.masks):
        (out / f"mask_{i:02d}.png").write_bytes(mask_png(mask_array(png)))
    written = [f"{len(reply.masks)} masks"]
    if hasattr(reply, "latents"):
        np.save(out / "latents.npy", latents_array(reply.latents))
        written = [f"{len(reply.images)} images", *written, "latents.npy"]
    (out / "classes.json").write_text(json.dumps(dict(head=reply.head, class_names=list(reply.class_names)), indent=1))
    scores = f"; agreement with the target {', '.join(f'{s:.2f}' for s in reply.scores)}" \
        if getattr(reply, "scores", None) else ""
    print(f"{', '.join(written)} ({reply.width}x{reply.height}, head {reply.head or '-'}) in {out}{scores}")
