"""Image bytes <-> uint8 arrays for the wire: PNG/JPEG in, PNG out.

Limits are checked on the encoded size and on the header's width x height *before* the
pixels are decoded, so a small file that would inflate to gigabytes is refused cheaply.
"""

from __future__ import annotations

import asyncio
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from serving.core.errors import InvalidInput

ACCEPTED_FORMATS = ("PNG", "JPEG")
SMALL_WORK = 64 * 1024  # decoded bytes; below this, decoding or encoding costs less than a thread hop


async def off_loop(fn, *args, size: int):
    """`fn(*args)` on a worker thread, or right here when `size` (the decoded bytes it reads or
    writes) is small: a 64 px PNG takes ~0.2-0.5 ms, a thread hop and the event loop's wake-up as much."""
    if size <= SMALL_WORK:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that transpose the image (exif_transpose swaps width and height)


def pil_images(pngs) -> list[Image.Image]:
    """A reply's PNG bytes (`client.generate(...)`, `reply.images`, `reply.images_png`, ...) as PIL images."""
    images = []
    for data in pngs:
        image = Image.open(io.BytesIO(data))
        image.load()
        images.append(image)
    return images


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as `_open` will return the image (EXIF orientation applied), read from the header
    without decoding the pixels; None when the data is not an accepted image (decoding raises its error)."""
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = img.size
        orientation = img.getexif().get(0x0112) if img.format == "JPEG" or "exif" in img.info else None
    except Exception:
        return None
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def decoded_size(data: bytes, size: tuple[int, int] | None = None) -> int:
    """Width x height x 3 from the image's header (not the pixels: a small file can inflate a lot), or from
    `size`, the header's (width, height) when it was read already; unreadable data counts as large, so its
    error is raised off the event loop."""
    size = size or header_size(data)
    return size[0] * size[1] * 3 if size else SMALL_WORK + 1


def decode_image(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 RGB [H, W, 3]; raises InvalidInput naming `field`."""
    img = _open(data, max_bytes, max_pixels, field)
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale: PIL's convert("RGB") clips it at 255 (most pixels white); scale its own range
        gray = np.clip(np.round(np.asarray(img, np.float64) / 257), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        raise InvalidInput(f"{field}: 32-bit float mode F is not supported; send 8- or 16-bit PNG or JPEG")
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)  # no needless copy


def decode_mask(mask, field: str, width: int, height: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """A `Mask` message -> float32 [height, width] in [0, 1]; it must match the image's size."""
    which = mask.WhichOneof("data")
    if which == "png":
        values = _png_mask(mask.png, f"{field}.png", max_bytes, max_pixels)
    elif which == "array":
        arr = mask.array
        if len(arr.values) != arr.width * arr.height or arr.width < 1 or arr.height < 1:
            raise InvalidInput(f"{field}.array: {len(arr.values)} values do not fill {arr.width}x{arr.height}")
        values = np.asarray(arr.values, np.float32).reshape(arr.height, arr.width)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InvalidInput(f"{field}.array: values must be in [0, 1]")
    else:
        raise InvalidInput(f"{field}: empty; set png or array")
    _check_mask_size(values, field, width, height)
    return values


def decode_region(data: bytes, field: str, width: int, height: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """A mask PNG (or JPEG) of a region -> bool [height, width], nonzero = in the region. It must
    match the image's size and mark at least one pixel; raises InvalidInput naming `field`."""
    region = _png_mask(data, field, max_bytes, max_pixels) > 0
    _check_mask_size(region, field, width, height)
    if not region.any():
        raise InvalidInput(f"{field}: empty (no pixel above 0); mark the region")
    return region


def _png_mask(data: bytes, field: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Mask image bytes -> float32 [H, W] in [0, 1] (8- or 16-bit grayscale; colour is converted)."""
    img = _open(data, max_bytes, max_pixels, field)
    if img.mode.startswith("I;16"):  # 16-bit grayscale: scale its own range, do not clip to 8 bits
        return np.asarray(img, np.float32) / 65535
    if img.mode in ("I", "F"):
        raise InvalidInput(f"{field}: 32-bit mode {img.mode} is not supported; send 8- or 16-bit grayscale")
    return np.asarray(img if img.mode == "L" else img.convert("L"), np.float32) / 255


def _check_mask_size(values: np.ndarray, field: str, width: int, height: int) -> None:
    if values.shape != (height, width):
        raise InvalidInput(f"{field}: size {values.shape[1]}x{values.shape[0]} does not match "
                           f"the image's {width}x{height}")


def decode_class_mask(data: bytes, field: str, size: int, num_classes: int, table: str,
                      max_bytes: int, max_pixels: int) -> np.ndarray:
    """A single-channel 8-bit PNG of class indices -> uint8 [size, size]; every index must be below
    `num_classes` (of `table`, e.g. "head 'lse'", for the message). Raises InvalidInput naming `field`."""
    img = _open(data, max_bytes, max_pixels, field)
    fmt = Image.open(io.BytesIO(data)).format  # the header again: `_open` returns a copy without it
    if fmt != "PNG":
        raise InvalidInput(f"{field}: {fmt} is lossy and would change class indices; send a PNG")
    if img.mode not in ("L", "P"):  # P: palette indices are the class indices, with colours to look at
        raise InvalidInput(f"{field}: mode {img.mode}; send a single-channel 8-bit PNG (mode L or P) of class indices")
    mask = np.asarray(img, dtype=np.uint8)
    if mask.shape != (size, size):
        raise InvalidInput(f"{field}: size {mask.shape[1]}x{mask.shape[0]} does not match the model's {size}x{size}")
    if int(mask.max()) >= num_classes:
        raise InvalidInput(f"{field}: class index {int(mask.max())} is not in {table} "
                           f"({num_classes} classes, 0..{num_classes - 1})")
    return mask


def _open(data: bytes, max_bytes: int, max_pixels: int, field: str) -> Image.Image:
    """Identify, limit-check and load PNG/JPEG bytes (orientation applied); raises InvalidInput."""
    if not data:
        raise InvalidInput(f"{field}: empty; send PNG or JPEG bytes")
    if len(data) > max_bytes:
        raise InvalidInput(f"{field}: {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception:
        raise InvalidInput(f"{field}: not a PNG or JPEG image ({len(data)} bytes could not be identified)") from None
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidInput(
            f"{field}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"{field}: has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            img.load()
            # honour the JPEG orientation tag, as viewers do; in place: a copy would double the decoded bytes
            ImageOps.exif_transpose(img, in_place=True)
            return img
    except Exception as e:  # corrupt or truncated data: PIL raises OSError, SyntaxError, ...
        raise InvalidInput(f"{field}: could not decode {img.format} data ({type(e).__name__})") from None


# zlib level 1: generated images compress poorly anyway (~9 % larger than at the default level 6)
# and encoding is a good part of what a request costs the server (~1.0 ms -> ~0.8 ms at 64 px)
PNG_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (deterministic: same pixels, same bytes)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def encode_pngs(images: np.ndarray) -> list[bytes]:
    return [encode_png(np.ascontiguousarray(im)) for im in images]


def encode_mask_pngs(masks: np.ndarray) -> list[bytes]:
    """uint8 [N, H, W] class indices -> single-channel 8-bit PNGs (mode L) of the same values."""
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise TypeError(f"expected uint8 [N, H, W], got {masks.dtype} {masks.shape}")
    out = []
    for mask in masks:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask)).save(buf, format="PNG", compress_level=PNG_LEVEL)
        out.append(buf.getvalue())
    return out
