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
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from serving.core.channel import ChannelClient, follow_job, job_result  # noqa: F401 (job_result: part of this API)
from serving.core.protos import semantics_pb2 as pb, semantics_pb2_grpc


def latents_message(latents) -> pb.Latents:
    """An array [N, num_ws, w_dim] / [N, w_dim] (or a Latents message, passed through)."""
    if isinstance(latents, pb.Latents):
        return latents
    values = np.asarray(latents, dtype=np.float32)
    return pb.Latents(shape=list(values.shape), values=values.ravel().tolist())


def latents_array(message: pb.Latents) -> np.ndarray:
    return np.asarray(message.values, dtype=np.float32).reshape(list(message.shape))


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

def add_semantics_commands(parser: argparse.ArgumentParser) -> None:
    ops = parser.add_subparsers(dest="op", required=True)
    helps = {
        "sample": "images, latents and masks from seeds or latents",
        "segment": "masks of the images that latents make",
        "fit-head": "fit a few-shot head from latents and masks you drew",
        "list-heads": "heads the server knows, with class names",
        "sample-conditional": "images whose segmentation follows a target mask (SCS)",
        "edit": "edit an image (its latent) towards a target mask (SIE)",
    }
    for op, help_text in helps.items():
        p = ops.add_parser(op, help=help_text)
        p.add_argument("--address", default="127.0.0.1:50051")
        p.add_argument("--timeout", type=float, default=600.0 if op == "fit-head" else 120.0)
        p.set_defaults(func=run_semantics_command)
        if op == "list-heads":
            continue
        if op == "sample":
            source = p.add_mutually_exclusive_group(required=True)
            source.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 1,2,3")
            source.add_argument("--latents", type=Path, help=".npy latents [N, num_ws, w_dim] or [N, w_dim]")
            p.add_argument("--psi", type=float, default=None, help="truncation in [0, 1] for --seeds")
            p.add_argument("--head", default="", help="also return masks by this head (see list-heads)")
        else:
            if op != "sample-conditional":
                p.add_argument("--latents", type=Path, required=True, help=".npy latents, e.g. from `sample`")
            if op != "fit-head":
                p.add_argument("--head", required=True, help="a head from list-heads, or segmenter")
        if op == "fit-head":
            p.add_argument("--name", required=True, help="[a-z0-9][a-z0-9_-]*, up to 64 characters")
            p.add_argument("--masks", type=Path, nargs="+", required=True, help="one class-index PNG per latent")
            p.add_argument("--class-names", type=lambda s: s.split(","), required=True, help="e.g. other,sky,water")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--iterations", type=int, default=0, help="0 = the paper's schedule (500-2000)")
            p.add_argument("--replace", action="store_true", help="overwrite a user head of that name")
            continue
        if op in ("sample-conditional", "edit"):
            p.add_argument("--target", type=Path, required=True, help="target mask: PNG of class indices")
            p.add_argument("--iterations", type=int, default=0, help="0 = 50")
            p.add_argument("--lr", type=float, default=0.0, help="0 = 0.01")
            p.add_argument("--space", default="", choices=("", "w", "w+"), help="'' = w+")
            p.add_argument("--preview-every", type=int, default=0, help="write a preview every N iterations")
        if op == "sample-conditional":
            p.add_argument("--num-samples", type=int, default=4)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--n-init", type=int, default=0, help="random latents tried per sample; 0 = 100")
            p.add_argument("--psi", type=float, default=None)
        if op == "edit":
            p.add_argument("--index", type=int, default=0, help="which latent of --latents to edit")
        p.add_argument("--out", type=Path, default=Path("samples"))


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run_semantics_command(args) -> int:
    latents = np.load(args.latents) if getattr(args, "latents", None) else None
    with SemanticsClient(args.address, timeout=args.timeout) as client:
        try:
            if args.op == "list-heads":
                for h in client.list_heads():
                    origin = "bundled" if h.bundled else f"user, {h.shots} shots"
                    print(f"{h.name}\t{h.kind}\t{origin}\t{', '.join(h.class_names)}")
                return 0
            if args.op == "fit-head":
                head = client.fit_head(args.name, latents, [m.read_bytes() for m in args.masks], args.class_names,
                                       args.seed, args.iterations, args.replace)
                print(f"head {head.name} ({head.kind}, {head.shots} shots): {', '.join(head.class_names)}")
                return 0
            if args.op == "sample":
                reply = client.sample(args.seeds, latents, args.head, args.psi)
            elif args.op == "segment":
                reply = client.segment(latents, args.head)
            elif args.op == "sample-conditional":
                reply = _follow(client.sample_conditional(
                    args.target.read_bytes(), args.head, args.num_samples, args.seed, args.n_init, args.iterations,
                    args.lr, args.space, args.psi, args.preview_every), args.out)
            else:
                reply = _follow(client.edit(latents[args.index:args.index + 1], args.target.read_bytes(), args.head,
                                            args.iterations, args.lr, args.space, args.preview_every), args.out)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    _write(reply, args.out)
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
