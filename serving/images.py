"""Image bytes <-> uint8 arrays for the wire: PNG/JPEG in, PNG out.

Limits are checked on the encoded size and on the header's width x height *before* the
pixels are decoded, so a small file that would inflate to gigabytes is refused cheaply.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from serving.engine import InvalidInput

ACCEPTED_FORMATS = ("PNG", "JPEG")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 RGB [H, W, 3]; raises InvalidInput naming `field`."""
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
            img = ImageOps.exif_transpose(img)  # honour the JPEG orientation tag, as viewers do
            rgb = img.convert("RGB")
    except Exception as e:  # corrupt or truncated data: PIL raises OSError, SyntaxError, ...
        raise InvalidInput(f"{field}: could not decode {img.format} data ({type(e).__name__})") from None
    return np.asarray(rgb, dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (deterministic: same pixels, same bytes)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_pngs(images: np.ndarray) -> list[bytes]:
    return [encode_png(np.ascontiguousarray(im)) for im in images]
