"""Request checks that every service shares: limits, field values, malformed wire bytes.

Every failure message starts with the proto field name and says why, so a client can act on
it ("num_samples: must be between 1 and 16, got 0"). Nothing is clamped or defaulted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from serving.core.errors import InvalidInput


@dataclass(frozen=True)
class Limits:
    max_samples: int = 16
    max_image_bytes: int = 8 * 1024 * 1024  # encoded PNG/JPEG size
    max_image_pixels: int = 4096 * 4096  # width * height, read from the header before decoding
    # Iterative work (semantics service), so that no request can ask for unbounded compute.
    max_iterations: int = 500  # SCS and SIE steps
    max_fit_iterations: int = 2000  # FitHead steps; the paper's schedule needs 2000 for 1-4 shots
    max_candidates: int = 256  # SCS random latents per sample (n_init)
    max_imagine_iterations: int = 5000  # IMAGINE iterations per stage
    # Decoded bytes of a request's images and masks, from their headers (serving/core/admission.py):
    # one 4096 x 4096 RGB image (48 MiB) fits; over it is INVALID_ARGUMENT before anything is decoded.
    max_request_decoded_bytes: int = 64 * 1024 * 1024
    # Estimated working memory of one Sample/Segment/FitHead/SampleConditional: samples x SemanticsInfo.sample_bytes.
    max_request_working_bytes: int = 4096 * 1024 * 1024


def choices(names: tuple[str, ...], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def quote(value: str, limit: int = 40) -> str:
    """A user's string for an error message, cut to `limit` characters: a long value must not make the
    message (it travels in the status metadata) too large to send."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def check_image_bytes(data: bytes, field: str, limits: Limits, errors: list) -> None:
    if not data:
        errors.append(f"{field}: empty; send PNG or JPEG bytes")
    elif len(data) > limits.max_image_bytes:
        errors.append(f"{field}: {len(data)} bytes is over the limit of {limits.max_image_bytes} bytes")


# The one rule for defaults, in every service: a number left at 0 (proto3's "unset") takes the default its .proto
# comment names ("0 = 1"); a number for which 0 is itself a meaningful value is `optional` in the .proto, and only
# leaving it unset takes the default (`optional_count`).
DEFAULT_NUM_SAMPLES = 1  # num_samples of Generate, Repaint, Composite and SampleConditional


def default_count(value: int, field: str, default: int, limit: int, errors: list) -> int:
    """A count where 0 means `default` (capped at `limit`); below 0 or above `limit` is an error."""
    if not 0 <= value <= limit:
        errors.append(f"{field}: must be between 1 and {limit} (0 = {min(default, limit)}), got {value}")
    return value or min(default, limit)


def optional_count(request, field: str, default: int, limit: int, errors: list) -> int:
    """An `optional` count where 0 is meaningful: unset means `default` (capped at `limit`)."""
    if not request.HasField(field):
        return min(default, limit)
    value = getattr(request, field)
    if not 0 <= value <= limit:
        errors.append(f"{field}: must be between 0 and {limit} (unset = {min(default, limit)}), got {value}")
    return value


MAX_PROBLEMS = 8  # reported per request: a list field with a bad value in every element is one line per element


def raise_invalid(errors: list) -> None:
    if errors:
        more = f"; and {len(errors) - MAX_PROBLEMS} more problems" if len(errors) > MAX_PROBLEMS else ""
        raise InvalidInput("; ".join(errors[:MAX_PROBLEMS]) + more)


def check_latents(message, field: str, latent_shape: tuple[int, int], low: int, high: int,
                  errors: list) -> np.ndarray | None:
    """A Latents message -> float32 [N, num_ws, w_dim] or [N, w_dim] with low <= N <= high; `latent_shape`:
    the generator's (num_ws, w_dim). Latents travel in SemanticsService and HiganService alike."""
    num_ws, w_dim = latent_shape
    shape, values = list(message.shape), message.values
    if not shape and not values:
        errors.append(f"{field}: missing; send latents as returned by Sample (shape and values)")
        return None
    if len(shape) not in (2, 3) or shape[1:] not in ([num_ws, w_dim], [w_dim]):
        errors.append(f"{field}: shape must be [N, {num_ws}, {w_dim}] (w+) or [N, {w_dim}] (w), got {shape}")
        return None
    if len(values) != math.prod(shape):
        errors.append(f"{field}: shape {shape} needs {math.prod(shape)} values, got {len(values)}")
        return None
    if not low <= shape[0] <= high:
        many = "exactly one latent" if low == high == 1 else f"{low} to {high} latents"
        errors.append(f"{field}: give {many}, got {shape[0]}")
        return None
    latents = np.asarray(values, dtype=np.float32).reshape(shape)
    if not np.isfinite(latents).all():
        errors.append(f"{field}: contains NaN or infinity")
        return None
    return latents


# ---- malformed wire bytes -------------------------------------------------------------------

@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse; the servicer answers INVALID_ARGUMENT.

    grpc turns a raising deserializer into UNKNOWN with the exception text and never reaches
    the handler or interceptors, so the deserializer returns this instead of raising.
    """

    reason: str


_WIRE_TYPES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "group", 4: "group", 5: "fixed32"}
_FIELD_TYPES = {v: k[5:].lower() for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}


def lenient_deserializer(message_cls):
    """A request_deserializer that returns MalformedRequest instead of raising.

    Besides bytes that do not parse at all, it catches a known field number sent with the
    wrong wire type (e.g. `image` as an integer): protobuf keeps such a field as an unknown
    field and the request would otherwise look merely empty.
    """
    descriptor = message_cls.DESCRIPTOR
    by_number = descriptor.fields_by_number

    def deserialize(data: bytes):
        try:
            message = message_cls.FromString(data)
        except DecodeError:
            return MalformedRequest(f"request: {len(data)} bytes do not parse as a {descriptor.full_name} message")
        for unknown in UnknownFieldSet(message):
            field = by_number.get(unknown.field_number)
            if field is not None:
                return MalformedRequest(
                    f"{field.name}: wrong wire type ({_WIRE_TYPES.get(unknown.wire_type, unknown.wire_type)}) "
                    f"for a {_FIELD_TYPES.get(field.type, field.type)} field"
                )
        return message

    return deserialize
