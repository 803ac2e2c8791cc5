"""A small blocking Python client for the semgen gRPC API.

    from serving.client import SemgenClient
    with SemgenClient("127.0.0.1:50051") as client:
        pngs = client.generate(open("ref.png", "rb").read(), level="conv5", num_samples=4, seed=0)

    python -m serving.client --address 127.0.0.1:50051 --image ref.png --level conv5 --out samples/

Errors arrive as `grpc.RpcError` with `.code()` and `.details()` (e.g. INVALID_ARGUMENT,
"level: unknown level 'conv9'; expected one of ...").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from serving.protos import pyramid_pb2 as pb, pyramid_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches the server's default


class SemgenClient:
    def __init__(self, address: str, timeout: float = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, wait_for_ready: bool = False):
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._pyramid = pyramid_pb2_grpc.PyramidServiceStub(self._channel)

    def generate_response(self, image_bytes: bytes, level: str, num_samples: int, seed: int,
                          class_index: int | None = None, class_name: str | None = None,
                          metadata=None) -> pb.GenerateResponse:
        """The full reply (images plus class, level, width, height)."""
        request = pb.GenerateRequest(image=image_bytes, level=level, num_samples=num_samples, seed=seed)
        if class_index is not None and class_name is not None:
            raise ValueError("give class_index or class_name, not both")
        if class_index is not None:
            request.class_index = class_index
        if class_name is not None:
            request.class_name = class_name
        return self._pyramid.Generate(request, timeout=self.timeout, metadata=metadata,
                                      wait_for_ready=self.wait_for_ready)

    def generate(self, image_bytes: bytes, level: str, num_samples: int, seed: int,
                 class_index: int | None = None, class_name: str | None = None) -> list[bytes]:
        """Generated images as PNG bytes, in sample order."""
        reply = self.generate_response(image_bytes, level, num_samples, seed, class_index, class_name)
        return list(reply.images)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SemgenClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description="call PyramidService.Generate")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--image", type=Path, required=True, help="reference PNG or JPEG")
    parser.add_argument("--level", default="conv5")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-index", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("samples"))
    args = parser.parse_args(argv)
    with SemgenClient(args.address) as client:
        try:
            reply = client.generate_response(args.image.read_bytes(), args.level, args.num_samples,
                                             args.seed, args.class_index)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(reply.images):
        (args.out / f"{args.level}_seed{args.seed}_{i:02d}.png").write_bytes(png)
    print(f"{len(reply.images)} images {reply.width}x{reply.height} of class {reply.class_index} "
          f"({reply.class_name}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
