"""Request checks that need no model: limits, field values, malformed wire bytes.

Every failure message starts with the proto field name and says why, so a client can act on
it ("num_samples: must be between 1 and 16, got 0"). Nothing is clamped or defaulted.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from serving.engine import InvalidInput, ModelInfo


@dataclass(frozen=True)
class Limits:
    max_samples: int = 16
    max_image_bytes: int = 8 * 1024 * 1024  # encoded PNG/JPEG size
    max_image_pixels: int = 4096 * 4096  # width * height, read from the header before decoding


@dataclass(frozen=True)
class GenerateArgs:
    level: str
    num_samples: int
    seed: int
    class_index: int | None


def _choices(names: tuple[str, ...], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_generate(request, info: ModelInfo, limits: Limits) -> GenerateArgs:
    """Check every scalar field of a GenerateRequest; raises InvalidInput listing all problems.

    The image bytes are only size-checked here; decoding them is `serving.images.decode_image`.
    """
    errors = []
    if not request.image:
        errors.append("image: empty; send PNG or JPEG bytes")
    elif len(request.image) > limits.max_image_bytes:
        errors.append(f"image: {len(request.image)} bytes is over the limit of {limits.max_image_bytes} bytes")

    if not request.level:
        errors.append(f"level: missing; expected one of {_choices(info.levels)}")
    elif request.level not in info.levels:
        errors.append(f"level: unknown level {request.level!r}; expected one of {_choices(info.levels)}")

    if not 1 <= request.num_samples <= limits.max_samples:
        errors.append(f"num_samples: must be between 1 and {limits.max_samples}, got {request.num_samples}")

    class_index = None
    which = request.WhichOneof("class_override")
    n = len(info.class_names)
    if which == "class_index":
        class_index = request.class_index
        if not 0 <= class_index < n:
            errors.append(f"class_index: {class_index} is out of range; the model has {n} classes (0..{n - 1})")
    elif which == "class_name":
        if request.class_name in info.class_names:
            class_index = info.class_names.index(request.class_name)
        else:
            errors.append(
                f"class_name: unknown class {request.class_name!r}; expected one of {_choices(info.class_names)}"
            )

    if errors:
        raise InvalidInput("; ".join(errors))
    return GenerateArgs(request.level, request.num_samples, request.seed, class_index)


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
