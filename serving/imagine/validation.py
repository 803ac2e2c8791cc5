"""Request checks for the IMAGINE service that need no decoding.

As in `serving.core.validation`: every message starts with the proto field name and says why, all
problems of a request are reported together, and nothing is clamped. Zero means "the documented
default" only where imagine.proto says so. Image bytes are size-checked here and decoded by
`serving.core.images`; region masks are checked against their image's size when decoded. The
pipeline checks once more (`ImaginePipeline.check`); its field names are mapped back to the
proto's by `proto_message`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.imagine.engine import ImagineInfo
from serving.core.validation import (
    Limits, check_image_bytes, choices, default_count, optional_count, quote, raise_invalid,
)

DEFAULT_VARIATIONS = 4
DEFAULT_SIGMA = 0.15
MAX_SEED = 2**64 - 1  # variation k starts from seed + k, a torch seed (uint64)
CONTROLS = ("shape", "style", "counterfactual")  # one at most; position combines with any
# The pipeline's field names (ValueError messages start with them) -> the request's.
PIPELINE_FIELDS = {
    "reference": "reference_png",
    "shape_image": "shape.shape_png",
    "shape_layers": "shape.shape_layers",
    "style_content": "style.content_png",
    "counterfactual_query": "counterfactual.query_png",
    "query_region": "counterfactual.query_region_png",
    "reference_region": "counterfactual.reference_region_png",
}


@dataclass(frozen=True)
class ImagineArgs:
    num_variations: int
    seed: int
    stage1: int
    stage2: int
    preview_every: int
    layers: tuple[str, ...] | None  # None: the default layers
    position: tuple[float, float, float] | None  # x, y, sigma
    shape_layers: tuple[str, ...] | None  # None: the deep layers (only with a shape control)
    control: str | None  # "shape", "style", "counterfactual" or None


def check_imagine(request, info: ImagineInfo, limits: Limits) -> ImagineArgs:
    """Check every field of an ImagineRequest that needs no decoding; raises InvalidInput listing all problems."""
    errors = []
    check_image_bytes(request.reference_png, "reference_png", limits, errors)
    num = default_count(request.num_variations, "num_variations", DEFAULT_VARIATIONS, limits.max_samples, errors)
    if request.seed > MAX_SEED - (num - 1):
        errors.append(f"seed: must be at most {MAX_SEED - (num - 1)} for {num} variations "
                      f"(variation k uses seed + k), got {request.seed}")
    layers = _check_layers(request.layers, "layers", info, errors)
    limit = limits.max_imagine_iterations
    stage1 = optional_count(request, "stage1_iterations", info.default_stage1, limit, errors)
    stage2 = optional_count(request, "stage2_iterations", info.default_stage2, limit, errors)
    if stage1 + stage2 == 0:
        errors.append("stage2_iterations: stage1_iterations and stage2_iterations are both 0; run at least one "
                      "iteration")
    position = _check_position(request, errors) if request.HasField("position") else None
    given = [name for name in CONTROLS if request.HasField(name)]
    if len(given) > 1:
        errors.append(f"{given[1]}: cannot be combined with {given[0]}; shape, style and counterfactual are "
                      f"separate controls (give one of them, with or without position)")
    shape_layers = None
    if request.HasField("shape"):
        check_image_bytes(request.shape.shape_png, "shape.shape_png", limits, errors)
        shape_layers = _check_layers(request.shape.shape_layers, "shape.shape_layers", info, errors)
    if request.HasField("style"):
        check_image_bytes(request.style.content_png, "style.content_png", limits, errors)
    if request.HasField("counterfactual"):
        for name in ("query_png", "query_region_png", "reference_region_png"):
            check_image_bytes(getattr(request.counterfactual, name), f"counterfactual.{name}", limits, errors)
    raise_invalid(errors)
    return ImagineArgs(num_variations=num, seed=request.seed, stage1=stage1, stage2=stage2,
                       preview_every=request.preview_every, layers=layers, position=position,
                       shape_layers=shape_layers, control=given[0] if given else None)


def proto_message(message: str) -> str:
    """A pipeline ValueError message with its field name as the request names it."""
    field, sep, rest = message.partition(":")
    return f"{PIPELINE_FIELDS[field]}{sep}{rest}" if field in PIPELINE_FIELDS else message


def _check_layers(names, field: str, info: ImagineInfo, errors: list) -> tuple[str, ...] | None:
    """Empty -> None (the default); each name must be a layer of the classifier, once."""
    if not names:
        return None
    for i, name in enumerate(names):
        if name not in info.layer_names:
            errors.append(f"{field}: unknown layer {quote(name)}; this classifier's layers are "
                          f"{choices(info.layer_names)}")
        elif name in names[:i]:
            errors.append(f"{field}: {quote(name)} is given twice")
    return tuple(names)


def _check_position(request, errors: list) -> tuple[float, float, float]:
    p = request.position
    for axis, value, side in (("x", p.x, "width"), ("y", p.y, "height")):
        if not (math.isfinite(value) and 0 <= value <= 1):
            errors.append(f"position.{axis}: {value:g} is outside the image; give a fraction of its {side} "
                          f"in [0, 1]")
    sigma = p.sigma or DEFAULT_SIGMA
    if not (math.isfinite(sigma) and 0 < sigma <= 1):
        errors.append(f"position.sigma: must be in (0, 1] as a fraction of the image size (0 = {DEFAULT_SIGMA}), "
                      f"got {p.sigma:g}")
    return float(p.x), float(p.y), float(sigma)
