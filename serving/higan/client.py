"""A small blocking Python client for semgen.v1.HiganService, and `semgen client attributes|manipulate`.

    from serving.higan.client import HiganClient, frame_latents
    with HiganClient("127.0.0.1:50051") as client:
        for a in client.list_attributes().attributes:
            print(a.name, a.level, list(a.default_layers), a.validation_accuracy)
        reply = client.manipulate([("horizon", 2.0), ("tree_count", -1.5, [3, 4, 5])], seeds=[3, 4],
                                  sweep=[-1, 0, 1], condition_on=["warmth"])
        for frame in reply.frames:                          # sweep-major: every seed for -1, then 0, then 1
            print(frame.index, frame.multiplier, frame.scores["horizon"])
        w_plus = frame_latents(reply)                        # float32 [frames, num_layers, w_dim]
        again = client.manipulate([("warmth", 1.0)], latents=w_plus[:2])

    semgen client attributes
    semgen client manipulate --seed 3 --seed 4 --edit horizon:2 --edit tree_count:-1.5:3,4,5 \\
        --sweep -1,0,1 --condition-on warmth --out-dir edits/

Strengths are in units of each boundary's `scale` (one standard deviation of sampled latents
along its normal). Errors arrive as `grpc.RpcError`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from semgen.options import REQUIRED, command, opt, write_options
from serving.core.channel import ChannelClient, Connection
from serving.core.protos import higan_pb2 as pb, higan_pb2_grpc
from serving.core.latents import latents_message


def edit_message(edit) -> pb.ManipulateRequest.Edit:
    """(attribute, strength) or (attribute, strength, layers) (or an Edit message, passed through)."""
    if isinstance(edit, pb.ManipulateRequest.Edit):
        return edit
    attribute, strength, *layers = edit
    return pb.ManipulateRequest.Edit(attribute=attribute, strength=strength,
                                     layers=list(layers[0]) if layers and layers[0] is not None else [])


def frame_latents(reply: pb.ManipulateResponse) -> np.ndarray:
    """Every frame's edited w+ as float32 [frames, num_layers, w_dim] (give them back as `latents`)."""
    values = np.asarray([list(f.latent) for f in reply.frames], dtype=np.float32)
    return values.reshape(len(reply.frames), reply.num_layers, reply.w_dim)


class HiganClient(ChannelClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stub = higan_pb2_grpc.HiganServiceStub(self._channel)

    def list_attributes(self, timeout: float | None = None, metadata=None) -> pb.ListAttributesResponse:
        return self._stub.ListAttributes(pb.ListAttributesRequest(), timeout=timeout or self.timeout,
                                         metadata=metadata, wait_for_ready=self.wait_for_ready)

    def manipulate(self, edits, seeds=None, latents=None, sweep=(), condition_on=(), timeout: float | None = None,
                   metadata=None) -> pb.ManipulateResponse:
        """Give `seeds` or `latents` ([N, num_layers, w_dim] / [N, w_dim] array, or a Latents message).
        `edits`: (attribute, strength[, layers]) tuples; `sweep`: multipliers of every strength."""
        request = pb.ManipulateRequest(edits=[edit_message(e) for e in edits], sweep=list(sweep),
                                       condition_on=list(condition_on))
        if seeds is not None:
            request.seeds.values.extend(int(s) for s in seeds)
        if latents is not None:
            request.latents.CopyFrom(latents_message(latents))
        return self._stub.Manipulate(request, timeout=timeout or self.timeout, metadata=metadata,
                                     wait_for_ready=self.wait_for_ready)


# ---- command line: `semgen client attributes`, `semgen client manipulate ...` ------------------

def _edit(text: str) -> tuple:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        layers = [int(layer) for layer in parts[2].split(",")] if len(parts) == 3 else None
        return parts[0], float(parts[1]), layers
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ATTRIBUTE:STRENGTH or ATTRIBUTE:STRENGTH:LAYERS (e.g. tree_count:-1.5:3,4,5), got {text!r}"
        ) from None


def _sweep(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. -1,0,1, got {text!r}") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"give each multiplier once (they name the files), got {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class Attributes(Connection):
    timeout: float = opt(120.0, "seconds before the call fails with DEADLINE_EXCEEDED")


@dataclass(frozen=True, kw_only=True)
class Manipulate(Attributes):
    seeds: tuple[int, ...] | None = opt(None, "a seed to edit; repeat for more", flag="--seed", append=True,
                                        metavar="SEED", group="source", required=True)
    latent_file: str | None = opt(None, ".npy latents [N, num_ws, w_dim] (w+) or [N, w_dim] (w)", group="source")
    edits: tuple[tuple, ...] = opt(REQUIRED, "e.g. horizon:2 (default layers) or tree_count:-1.5:3,4,5; strength in "
                                             "units of the boundary's scale; repeat for several edits", flag="--edit",
                                   append=True, parse=_edit, metavar="ATTRIBUTE:STRENGTH[:LAYERS]")
    sweep: tuple[float, ...] = opt((), "multipliers of every strength, one image each, e.g. -1,0,1 (default: just "
                                       "the edit)", parse=_sweep, metavar="M1,M2,...")
    condition_on: tuple[str, ...] = opt((), "keep this attribute (its boundary is projected out of the edits); "
                                            "repeat or comma-separate", append=True, metavar="ATTRIBUTE")
    out_dir: str = opt("manipulate", "where the images (and these options) go")


def add_attributes_command(parser: argparse.ArgumentParser) -> None:
    command(parser, Attributes, run_attributes_command)


def add_manipulate_command(parser: argparse.ArgumentParser) -> None:
    command(parser, Manipulate, run_manipulate_command)
    # Let "--sweep -1,0,1" read as a value, not as an unknown option (argparse knows only "-1").
    parser._negative_number_matcher = re.compile(r"^-\d[\d.,eE+-]*$")


def run_attributes_command(o: Attributes) -> int:
    with HiganClient(o.address, timeout=o.timeout, **o.channel_kwargs()) as client:
        try:
            reply = client.list_attributes()
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    rows = [("name", "level", "default layers", "validation accuracy")]
    rows += [(a.name, a.level, ",".join(map(str, a.default_layers)), f"{a.validation_accuracy:.3f}")
             for a in reply.attributes]
    _print_table(rows)
    print(f"generator: {reply.num_layers} layers (0..{reply.num_layers - 1}), w_dim {reply.w_dim}, "
          f"images {reply.image_size}x{reply.image_size}")
    return 0


def run_manipulate_command(o: Manipulate) -> int:
    latents = np.load(o.latent_file) if o.latent_file else None
    condition_on = [name for names in o.condition_on for name in names.split(",") if name]
    with HiganClient(o.address, timeout=o.timeout, **o.channel_kwargs()) as client:
        try:
            reply = client.manipulate(o.edits, o.seeds, latents, o.sweep, condition_on)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    _write(reply, Path(o.out_dir), [*dict.fromkeys([e[0] for e in o.edits] + condition_on)])
    write_options(o, o.out_dir, "manipulate_options")
    return 0


def _write(reply: pb.ManipulateResponse, out: Path, shown: list[str]) -> None:
    """PNGs named by latent index and multiplier, latents.npy, scores.json; a table of the scores
    of the edited and kept attributes."""
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for frame in reply.frames:
        name = f"{frame.index:02d}_x{frame.multiplier:+g}.png"
        (out / name).write_bytes(frame.image_png)
        frames.append(dict(file=name, index=frame.index, multiplier=round(frame.multiplier, 6),
                           scores={k: round(v, 6) for k, v in sorted(frame.scores.items())}))
    np.save(out / "latents.npy", frame_latents(reply))
    (out / "scores.json").write_text(json.dumps(dict(frames=frames), indent=1))
    rows = [("file", *shown)] + [(f["file"], *(f"{f['scores'].get(n, float('nan')):.3f}" for n in shown))
                                 for f in frames]
    _print_table(rows)
    print(f"{len(frames)} images ({reply.image_size}x{reply.image_size}) in {out}; every score in scores.json, "
          f"the edited w+ latents in latents.npy ([{len(frames)}, {reply.num_layers}, {reply.w_dim}])")


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
