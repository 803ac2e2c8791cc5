"""Admission by cost: the decoded bytes of a request's images and masks, read from their headers
before any is decoded, bound the memory a request (and all requests together) can take.

- `RequestCost` adds up one request's decoded bytes from the headers (image: width x height x 3, uint8 RGB;
  mask: width x height x 4, float32; class mask: width x height, uint8) and checks each mask's header size
  against its image's. Over `Limits.max_request_decoded_bytes` is the client's fault and never fits:
  InvalidInput (INVALID_ARGUMENT) naming the field that crossed it.
- `Admission` is the server-wide budget of decoded bytes in flight (`--max-decoded-bytes-in-flight`),
  one for all services. `hold` takes a request's bytes at once or refuses at once with ResourceExhausted
  (RESOURCE_EXHAUSTED: retry later); the servicer holds them until its reply is encoded.
"""

from __future__ import annotations

import contextlib
import threading

from serving.core.errors import InvalidInput, ResourceExhausted
from serving.core.images import header_size

IMAGE_BYTES_PER_PIXEL = 3  # decode_image: uint8 RGB (PIL converts every mode to RGB)
MASK_BYTES_PER_PIXEL = 4  # decode_mask / decode_region: float32
CLASS_MASK_BYTES_PER_PIXEL = 1  # decode_class_mask: uint8 indices
DEFAULT_DECODED_BYTES_IN_FLIGHT = 512 * 1024 * 1024  # --max-decoded-bytes-in-flight


class Admission:
    """The server-wide budget of decoded image/mask bytes in flight. Safe from the event loop and threads."""

    def __init__(self, budget: int):
        self.budget = budget
        self.in_flight = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, nbytes: int, field: str = "request"):
        """Hold `nbytes` for the block, or raise ResourceExhausted at once when they do not fit."""
        with self._lock:
            if self.in_flight + nbytes > self.budget:
                busy = self.in_flight
                raise ResourceExhausted(
                    f"{field}: {nbytes} decoded bytes do not fit the server's budget now ({busy} of "
                    f"{self.budget} bytes in flight); retry later")
            self.in_flight += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= nbytes


class RequestCost:
    """One request's decoded bytes, added up from headers; raises InvalidInput naming the field that
    takes it over `limit` or whose mask size does not match its image's."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0

    def add(self, nbytes: int, field: str) -> None:
        self.total += nbytes
        if self.total > self.limit:
            raise InvalidInput(f"{field}: the request's images and masks decode to {self.total} bytes or more, over "
                               f"the limit of {self.limit} bytes per request; send smaller images or fewer masks")

    def image(self, data: bytes, field: str) -> tuple[int, int] | None:
        """Count an image; its (width, height) as decoded (orientation applied), None if unreadable
        (decoding it raises the field's error)."""
        size = header_size(data)
        if size is not None:
            self.add(size[0] * size[1] * IMAGE_BYTES_PER_PIXEL, field)
        return size

    def mask_png(self, data: bytes, field: str, image: tuple[int, int] | None) -> None:
        """Count a mask image that must be `image`'s (width, height)."""
        size = header_size(data)
        if size is None:
            return
        # transposed sizes pass here (an EXIF orientation can sit where only decoding finds it); decoding
        # checks the exact size
        if image is not None and size not in (image, image[::-1]):
            raise InvalidInput(f"{field}: size {size[0]}x{size[1]} does not match the image's {image[0]}x{image[1]}")
        self.add(size[0] * size[1] * MASK_BYTES_PER_PIXEL, field)

    def mask(self, mask, field: str, image: tuple[int, int] | None) -> None:
        """Count a `Mask` message (png or array) that must match `image`'s size."""
        which = mask.WhichOneof("data")
        if which == "png":
            self.mask_png(mask.png, f"{field}.png", image)
        elif which == "array":  # the values are in memory already; as float32 they take 4 bytes each
            self.add(len(mask.array.values) * MASK_BYTES_PER_PIXEL, f"{field}.array")

    def class_mask(self, data: bytes, field: str, size: int) -> None:
        """Count a class-index mask that must be `size` x `size` (the model's)."""
        got = header_size(data)
        if got is not None:
            if got != (size, size):
                raise InvalidInput(f"{field}: size {got[0]}x{got[1]} does not match the model's {size}x{size}")
            self.add(size * size * CLASS_MASK_BYTES_PER_PIXEL, field)
