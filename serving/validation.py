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
    # Iterative work (semantics service), so that no request can ask for unbounded compute.
    max_iterations: int = 500  # SCS and SIE steps
    max_fit_iterations: int = 2000  # FitHead steps; the paper's schedule needs 2000 for 1-4 shots
    max_candidates: int = 256  # SCS random latents per sample (n_init)
    max_imagine_iterations: int = 5000  # IMAGINE iterations per stage


@dataclass(frozen=True)
class SampleArgs:
    """Fields every generating request shares."""

    num_samples: int
    seed: int
    class_index: int | None


@dataclass(frozen=True)
class GenerateArgs(SampleArgs):
    levels: dict  # level -> the LevelMask's Mask message, or None for the whole map


@dataclass(frozen=True)
class RepaintArgs(SampleArgs):
    level: str


@dataclass(frozen=True)
class CompositeArgs(SampleArgs):
    level: str
    box: tuple[int, int, int, int]  # left, top, width, height


def _choices(names: tuple[str, ...], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_generate(request, info: ModelInfo, limits: Limits) -> GenerateArgs:
    """Check every field of a GenerateRequest that needs no decoding; raises InvalidInput listing
    all problems. Image bytes are size-checked here and decoded by `serving.images`."""
    errors = []
    _check_image_bytes(request.image, "image", limits, errors)
    levels = {}
    if request.level and request.level_masks:
        errors.append("level: give level or level_masks, not both")
    elif request.level_masks:
        for i, entry in enumerate(request.level_masks):
            field = f"level_masks[{i}].level"
            if _check_level(entry.level, field, info, errors) and entry.level in levels:
                errors.append(f"{field}: {entry.level!r} is given twice")
            levels[entry.level] = entry.mask if entry.HasField("mask") else None
    elif _check_level(request.level, "level", info, errors):
        levels[request.level] = None
    sample = _check_sample_fields(request, info, limits, errors)
    _raise(errors)
    return GenerateArgs(**sample, levels=levels)


def check_repaint(request, info: ModelInfo, limits: Limits) -> RepaintArgs:
    errors = []
    _check_image_bytes(request.image, "image", limits, errors)
    if not request.HasField("region"):
        errors.append("region: missing; send the region to repaint as a PNG or an array mask")
    _check_level(request.level, "level", info, errors)
    sample = _check_sample_fields(request, info, limits, errors)
    _raise(errors)
    return RepaintArgs(**sample, level=request.level)


def check_composite(request, info: ModelInfo, limits: Limits) -> CompositeArgs:
    errors = []
    _check_image_bytes(request.image, "image", limits, errors)
    _check_image_bytes(request.object_image, "object_image", limits, errors)
    box = request.box
    if not request.HasField("box"):
        errors.append("box: missing; give left, top, width and height in pixels of the image")
    elif box.width < 1 or box.height < 1:
        errors.append(f"box: width and height must be >= 1, got {box.width}x{box.height}")
    elif box.left < 0 or box.top < 0:
        errors.append(f"box: left and top must be >= 0, got ({box.left}, {box.top})")
    _check_level(request.level, "level", info, errors)
    sample = _check_sample_fields(request, info, limits, errors)
    _raise(errors)
    return CompositeArgs(**sample, level=request.level, box=(box.left, box.top, box.width, box.height))


def check_box_inside(box: tuple[int, int, int, int], width: int, height: int) -> None:
    left, top, w, h = box
    if left + w > width or top + h > height:
        raise InvalidInput(f"box: ({left}, {top}, {w}, {h}) is not inside the {width}x{height} image")


def _check_image_bytes(data: bytes, field: str, limits: Limits, errors: list) -> None:
    if not data:
        errors.append(f"{field}: empty; send PNG or JPEG bytes")
    elif len(data) > limits.max_image_bytes:
        errors.append(f"{field}: {len(data)} bytes is over the limit of {limits.max_image_bytes} bytes")


def _check_level(level: str, field: str, info: ModelInfo, errors: list) -> bool:
    if not level:
        errors.append(f"{field}: missing; expected one of {_choices(info.levels)}")
    elif level not in info.levels:
        errors.append(f"{field}: unknown level {level!r}; expected one of {_choices(info.levels)}")
    else:
        return True
    return False


def _check_sample_fields(request, info: ModelInfo, limits: Limits, errors: list) -> dict:
    """num_samples, seed and the class_override oneof, shared by every generating request."""
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
    return dict(num_samples=request.num_samples, seed=request.seed, class_index=class_index)


def _default_count(value: int, field: str, default: int, limit: int, errors: list) -> int:
    """A count where 0 means `default` (capped at `limit`); above `limit` is an error."""
    if not 0 <= value <= limit:
        errors.append(f"{field}: must be between 1 and {limit} (0 = {min(default, limit)}), got {value}")
    return value or min(default, limit)


def _raise(errors: list) -> None:
    if errors:
        raise InvalidInput("; ".join(errors))


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
