"""PyramidService request checks that need no decoding: levels, samples, class overrides, boxes.

Every failure message starts with the proto field name and says why, so a client can act on
it ("num_samples: must be between 1 and 16 (0 = 1), got 17"). Nothing is clamped; a field left at 0 takes its
documented default (the one rule of every service: serving/core/validation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.core.errors import InvalidInput
from serving.core.validation import (
    DEFAULT_NUM_SAMPLES, Limits, check_image_bytes, choices, default_count, quote, raise_invalid,
)
from serving.pyramid.engine import ModelInfo


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


def check_generate(request, info: ModelInfo, limits: Limits) -> GenerateArgs:
    """Check every field of a GenerateRequest that needs no decoding; raises InvalidInput listing
    all problems. Image bytes are size-checked here and decoded by `serving.core.images`."""
    errors = []
    check_image_bytes(request.image, "image", limits, errors)
    levels = {}
    if request.level and request.level_masks:
        errors.append("level: give level or level_masks, not both")
    elif request.level_masks:
        for i, entry in enumerate(request.level_masks):
            field = f"level_masks[{i}].level"
            if _check_level(entry.level, field, info, errors) and entry.level in levels:
                errors.append(f"{field}: {quote(entry.level)} is given twice")
            levels[entry.level] = entry.mask if entry.HasField("mask") else None
    elif _check_level(request.level, "level", info, errors):
        levels[request.level] = None
    sample = _check_sample_fields(request, info, limits, errors)
    raise_invalid(errors)
    return GenerateArgs(**sample, levels=levels)


def check_repaint(request, info: ModelInfo, limits: Limits) -> RepaintArgs:
    errors = []
    check_image_bytes(request.image, "image", limits, errors)
    if not request.HasField("region"):
        errors.append("region: missing; send the region to repaint as a PNG or an array mask")
    _check_level(request.level, "level", info, errors)
    sample = _check_sample_fields(request, info, limits, errors)
    raise_invalid(errors)
    return RepaintArgs(**sample, level=request.level)


def check_composite(request, info: ModelInfo, limits: Limits) -> CompositeArgs:
    errors = []
    check_image_bytes(request.image, "image", limits, errors)
    check_image_bytes(request.object_image, "object_image", limits, errors)
    box = request.box
    if not request.HasField("box"):
        errors.append("box: missing; give left, top, width and height in pixels of the image")
    elif box.width < 1 or box.height < 1:
        errors.append(f"box: width and height must be >= 1, got {box.width}x{box.height}")
    elif box.left < 0 or box.top < 0:
        errors.append(f"box: left and top must be >= 0, got ({box.left}, {box.top})")
    _check_level(request.level, "level", info, errors)
    sample = _check_sample_fields(request, info, limits, errors)
    raise_invalid(errors)
    return CompositeArgs(**sample, level=request.level, box=(box.left, box.top, box.width, box.height))


def check_box_inside(box: tuple[int, int, int, int], width: int, height: int) -> None:
    left, top, w, h = box
    if left + w > width or top + h > height:
        raise InvalidInput(f"box: ({left}, {top}, {w}, {h}) is not inside the {width}x{height} image")


def _check_level(level: str, field: str, info: ModelInfo, errors: list) -> bool:
    if not level:
        errors.append(f"{field}: missing; expected one of {choices(info.levels)}")
    elif level not in info.levels:
        errors.append(f"{field}: unknown level {quote(level)}; expected one of {choices(info.levels)}")
    else:
        return True
    return False


def _check_sample_fields(request, info: ModelInfo, limits: Limits, errors: list) -> dict:
    """num_samples, seed and the class_override oneof, shared by every generating request."""
    num_samples = default_count(request.num_samples, "num_samples", DEFAULT_NUM_SAMPLES, limits.max_samples, errors)
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
                f"class_name: unknown class {quote(request.class_name)}; expected one of {choices(info.class_names)}"
            )
    return dict(num_samples=num_samples, seed=request.seed, class_index=class_index)
