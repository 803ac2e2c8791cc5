"""Request checks for the HiGAN service (everything but the pipeline's own checks).

As in `serving.core.validation`: every message starts with the proto field name and says why, all
problems of a request are reported together, and nothing is clamped. An unknown attribute is
NotFound, checked last. The pipeline checks edits once more (`HiganPipeline.check_edits`); its
messages already use the request's field names ("edits[0].layers: ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from semgen.bundle import no_directions
from serving.core.errors import NotFound
from serving.higan.engine import AttributeEdit, HiganInfo
from serving.core.validation import Limits, check_latents, choices, quote, raise_invalid

MAX_EDITS = 16
MAX_SWEEP = 16
MAX_CONDITION_ON = 16
MAX_STRENGTH = 100.0  # |strength| and |sweep value|, in units of the boundary's scale


@dataclass(frozen=True)
class ManipulateArgs:
    seeds: list[int] | None
    latents: np.ndarray | None
    edits: list[AttributeEdit]
    sweep: tuple[float, ...]
    condition_on: tuple[str, ...]

    @property
    def num_latents(self) -> int:
        return len(self.seeds) if self.seeds is not None else len(self.latents)


def check_manipulate(request, info: HiganInfo, limits: Limits) -> ManipulateArgs:
    errors = []
    seeds = latents = None
    source = request.WhichOneof("source")
    if source == "latents":
        latents = check_latents(request.latents, "latents", info.latent_shape, 1, limits.max_samples, errors)
    elif source == "seeds" and 1 <= len(request.seeds.values) <= limits.max_samples:
        seeds = list(request.seeds.values)
    else:
        given = len(request.seeds.values) if source else 0
        errors.append(f"seeds: give 1 to {limits.max_samples} seeds (or latents), got {given}")
    edits = [_check_edit(edit, f"edits[{i}]", info, errors) for i, edit in enumerate(request.edits)]
    if not 1 <= len(edits) <= MAX_EDITS:
        errors.append(f"edits: give 1 to {MAX_EDITS} edits (attribute, strength, layers), got {len(edits)}")
    sweep = tuple(request.sweep) or (1.0,)
    if len(sweep) > MAX_SWEEP:
        errors.append(f"sweep: give at most {MAX_SWEEP} multipliers, got {len(sweep)}")
    for i, value in enumerate(request.sweep):
        _check_amount(value, f"sweep[{i}]", "a multiplier of every strength", errors)
    condition_on = tuple(request.condition_on)
    if len(condition_on) > MAX_CONDITION_ON:
        errors.append(f"condition_on: give at most {MAX_CONDITION_ON} attributes, got {len(condition_on)}")
    for i, name in enumerate(condition_on):
        if not name:
            errors.append(f"condition_on[{i}]: empty; give an attribute name")
        elif name in condition_on[:i]:
            errors.append(f"condition_on[{i}]: {quote(name)} is given twice")
    raise_invalid(errors)
    for i, edit in enumerate(edits):
        _known_attribute(edit.attribute, f"edits[{i}].attribute", info)
    for i, name in enumerate(condition_on):
        _known_attribute(name, f"condition_on[{i}]", info)
    return ManipulateArgs(seeds=seeds, latents=latents, edits=edits, sweep=sweep, condition_on=condition_on)


def _check_edit(edit, field: str, info: HiganInfo, errors: list) -> AttributeEdit:
    if not edit.attribute:
        errors.append(f"{field}.attribute: missing; expected one of {choices(tuple(info.attributes))}")
    _check_amount(edit.strength, f"{field}.strength", "in units of the boundary's scale", errors)
    layers = tuple(edit.layers)
    num_ws = info.latent_shape[0]
    bad = [layer for layer in layers if layer >= num_ws]
    if bad:
        errors.append(f"{field}.layers: {bad} out of range; this generator has layers 0..{num_ws - 1}")
    twice = sorted({layer for i, layer in enumerate(layers) if layer in layers[:i]})
    if twice:
        errors.append(f"{field}.layers: {twice} given twice; give each layer once")
    return AttributeEdit(edit.attribute, float(edit.strength), layers or None)


def _check_amount(value: float, field: str, meaning: str, errors: list) -> None:
    if not (math.isfinite(value) and abs(value) <= MAX_STRENGTH):
        errors.append(f"{field}: must be a finite number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] ({meaning}), "
                      f"got {value:g}")


def _known_attribute(name: str, field: str, info: HiganInfo) -> None:
    if not info.attributes:
        raise no_directions(field)
    if name not in info.attributes:
        raise NotFound(f"{field}: no boundary named {quote(name)}; known: {choices(tuple(info.attributes))}")
