"""Request checks for the semantics service that need no decoding: latents, heads, job settings.

As in `serving.core.validation`: every message starts with the proto field name and says why, all
problems of a request are reported together, and nothing is clamped. Zero means "the documented
default" only where semantics.proto says so. An unknown head is NotFound, checked last.
Mask PNGs are size-checked here and decoded by `serving.core.images.decode_class_mask`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from semgen.bundle import unknown_head
from serving.core.errors import NotFound
from serving.semantics.engine import SEGMENTER, SemanticsInfo
from serving.core.validation import (DEFAULT_NUM_SAMPLES, Limits, check_image_bytes, check_latents, choices,
                                     default_count, raise_invalid)

MAX_SHOTS = 16  # few-shot heads: the paper fits from 1 to 16 samples
MAX_CLASSES = 256  # masks are 8-bit
MAX_CLASS_NAME_CHARS = 64
SHOWN_CHARS = 40  # a bad value is quoted cut to this many characters
MiB = 1024 * 1024
SHOWN_PROBLEMS = 5  # class names with a problem named one by one in the message; the rest are counted
# Saved heads travel in every ListHeads reply, which is not paged: it stays bounded because a user head's
# HeadInfo is at most this many bytes (the 64-character ASCII name, the kind, shots, and MAX_CLASSES names of
# MAX_CLASS_NAME_CHARS characters of up to 4 UTF-8 bytes, each with its tag and length) and --max-user-heads
# bounds their number (ServeOptions.check keeps their product within half of --max-message-bytes).
MAX_HEAD_INFO_BYTES = 128 + MAX_CLASSES * (3 + 4 * MAX_CLASS_NAME_CHARS)
HEAD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_SCS_SEED = 2**32  # the pipeline numbers candidate seeds seed * 1_000_003 + i in int64
DEFAULT_ITERATIONS = 50
DEFAULT_N_INIT = 100
DEFAULT_LR = 0.01
SPACES = ("w", "w+")


@dataclass(frozen=True)
class SamplingArgs:
    seeds: list[int] | None
    latents: np.ndarray | None
    psi: float
    head: str | None


@dataclass(frozen=True)
class SegmentArgs:
    latents: np.ndarray
    head: str


@dataclass(frozen=True)
class FitHeadArgs:
    name: str
    latents: np.ndarray
    class_names: tuple[str, ...]
    seed: int
    iterations: int | None  # None: the paper's schedule for this many shots
    replace: bool


@dataclass(frozen=True)
class OptimiseArgs:
    """Settings SCS and SIE share."""

    head: str
    iterations: int
    lr: float
    space: str
    preview_every: int


@dataclass(frozen=True)
class ConditionalArgs(OptimiseArgs):
    num_samples: int
    seed: int
    n_init: int
    psi: float


@dataclass(frozen=True)
class EditArgs(OptimiseArgs):
    latent: np.ndarray


def check_sample(request, info: SemanticsInfo, limits: Limits) -> SamplingArgs:
    errors = []
    seeds = latents = None
    if request.seeds and request.HasField("latents"):
        errors.append("seeds: give seeds or latents, not both")
    elif request.HasField("latents"):
        latents = check_latents(request.latents, "latents", info.latent_shape, 1, limits.max_samples, errors)
        if request.HasField("truncation_psi"):
            errors.append("truncation_psi: applies to seeds only; latents are used as given")
    elif not 1 <= len(request.seeds) <= limits.max_samples:
        errors.append(f"seeds: give 1 to {limits.max_samples} seeds (or latents), got {len(request.seeds)}")
    else:
        seeds = list(request.seeds)
    samples = len(seeds) if seeds else 0 if latents is None else len(latents)
    _check_working_bytes(samples, "seeds" if seeds else "latents", bool(request.head), info, limits, errors)
    psi = _check_psi(request, errors)
    raise_invalid(errors)
    head = request.head or None
    if head:
        known_head(head, info)
    return SamplingArgs(seeds=seeds, latents=latents, psi=psi, head=head)


def check_segment(request, info: SemanticsInfo, limits: Limits) -> SegmentArgs:
    errors = []
    latents = check_latents(request.latents, "latents", info.latent_shape, 1, limits.max_samples, errors)
    _check_head_given(request.head, info, errors)
    _check_working_bytes(0 if latents is None else len(latents), "latents", True, info, limits, errors)
    raise_invalid(errors)
    known_head(request.head, info)
    return SegmentArgs(latents=latents, head=request.head)


def _check_working_bytes(samples: int, field: str, head: bool, info: SemanticsInfo, limits: Limits,
                         errors: list) -> None:
    """Samples x the generator's bytes per sample (read by a head: its features and logits too) within the request
    limit: at 1024 px one sample takes ~270x the working memory of a 64 px one, so a count limit alone does not
    bound memory. (SampleConditional's candidates go through in chunks of PASS_BYTES: not counted here.)"""
    per_sample = info.sample_bytes if head else 4 * 3 * info.image_size ** 2
    need, limit = samples * per_sample, limits.max_request_working_bytes
    if need > limit:
        errors.append(f"{field}: {samples} samples of {info.image_size} px need about {need / MiB:.0f} MiB of working "
                      f"memory, over the limit of {limit / MiB:.0f} MiB per request (--max-request-working-bytes); "
                      f"ask for at most {limit // per_sample}")


def check_fit_head(request, info: SemanticsInfo, limits: Limits) -> FitHeadArgs:
    """Everything but the mask pixels (those need the class table checked here)."""
    errors = []
    name = request.name
    if not name:
        errors.append("name: missing; give the new head a name")
    elif not HEAD_NAME.fullmatch(name):
        errors.append(f"name: {name[:80]!r} is not a valid head name; use 1 to 64 of a-z, 0-9, '_' and '-', "
                      f"starting with a letter or digit")
    elif name == SEGMENTER:
        errors.append(f"name: {SEGMENTER!r} is reserved for the pixel-space segmenter; choose another name")
    elif name in info.heads and info.heads[name].bundled:
        errors.append(f"name: {name!r} is a bundled head and cannot be replaced; choose another name")
    latents = check_latents(request.latents, "latents", info.latent_shape, 1, MAX_SHOTS, errors)
    shots = len(latents) if latents is not None else None
    if shots is not None and len(request.masks) != shots:
        errors.append(f"masks: give one mask per latent ({shots}), got {len(request.masks)}")
    for i, data in enumerate(request.masks):
        check_image_bytes(data, f"masks[{i}]", limits, errors)
    class_names = tuple(request.class_names)
    if not 2 <= len(class_names) <= MAX_CLASSES:
        errors.append(f"class_names: give 2 to {MAX_CLASSES} classes, got {len(class_names)}")
    if len(class_names) <= MAX_CLASSES:  # more: not worth checking one by one
        _check_class_names(class_names, errors)
    if not 0 <= request.iterations <= limits.max_fit_iterations:
        errors.append(f"iterations: must be between 1 and {limits.max_fit_iterations} "
                      f"(0 = the paper's schedule), got {request.iterations}")
    _check_working_bytes(shots or 0, "latents", True, info, limits, errors)  # every shot's features are kept
    raise_invalid(errors)
    return FitHeadArgs(name=name, latents=latents, class_names=class_names, seed=request.seed,
                       iterations=request.iterations or None, replace=request.replace)


def _check_class_names(class_names: tuple[str, ...], errors: list) -> None:
    """Each name: 1 to MAX_CLASS_NAME_CHARS printable characters, given once. The first SHOWN_PROBLEMS
    problems are named (a bad value cut to SHOWN_CHARS), the others counted."""
    problems, seen = [], set()
    for i, cls in enumerate(class_names):
        if not cls:
            problems.append(f"class_names[{i}]: empty; every class needs a name")
        elif len(cls) > MAX_CLASS_NAME_CHARS:
            problems.append(f"class_names[{i}]: {_cut(cls)!r} is {len(cls)} characters; "
                            f"use at most {MAX_CLASS_NAME_CHARS}")
        elif not cls.isprintable():
            problems.append(f"class_names[{i}]: {_cut(cls)!r} contains a control or other non-printable "
                            f"character; use printable characters and plain spaces")
        elif cls in seen:
            problems.append(f"class_names[{i}]: {cls!r} is given twice")
        seen.add(cls)
    errors.extend(problems[:SHOWN_PROBLEMS])
    if len(problems) > SHOWN_PROBLEMS:
        errors.append(f"class_names: {len(problems) - SHOWN_PROBLEMS} more names with problems")


def _cut(value: str) -> str:
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…"


def check_sample_conditional(request, info: SemanticsInfo, limits: Limits) -> ConditionalArgs:
    errors = []
    check_image_bytes(request.target_mask, "target_mask", limits, errors)
    num_samples = default_count(request.num_samples, "num_samples", DEFAULT_NUM_SAMPLES, limits.max_samples, errors)
    if request.seed >= MAX_SCS_SEED:
        errors.append(f"seed: must be below {MAX_SCS_SEED} for SampleConditional, got {request.seed}")
    n_init = default_count(request.n_init, "n_init", DEFAULT_N_INIT, limits.max_candidates, errors)
    optimise = _check_optimise(request, info, limits, errors)
    psi = _check_psi(request, errors)
    _check_working_bytes(num_samples or 0, "num_samples", True, info, limits, errors)  # optimised together
    raise_invalid(errors)
    known_head(request.head, info)
    return ConditionalArgs(**optimise, num_samples=num_samples, seed=request.seed, n_init=n_init, psi=psi)


def check_edit(request, info: SemanticsInfo, limits: Limits) -> EditArgs:
    errors = []
    latent = check_latents(request.latent, "latent", info.latent_shape, 1, 1, errors)
    check_image_bytes(request.target_mask, "target_mask", limits, errors)
    optimise = _check_optimise(request, info, limits, errors)
    raise_invalid(errors)
    known_head(request.head, info)
    return EditArgs(**optimise, latent=latent)


def _check_optimise(request, info: SemanticsInfo, limits: Limits, errors: list) -> dict:
    """head, iterations, learning_rate, space and preview_every of SCS and SIE."""
    _check_head_given(request.head, info, errors)
    iterations = default_count(request.iterations, "iterations", DEFAULT_ITERATIONS, limits.max_iterations, errors)
    lr = request.learning_rate or DEFAULT_LR
    if not (math.isfinite(lr) and 0 < lr <= 1):
        errors.append(f"learning_rate: must be in (0, 1] (0 = {DEFAULT_LR}), got {request.learning_rate:g}")
    space = request.space or "w+"
    if space not in SPACES:
        errors.append(f"space: must be 'w' or 'w+' ('' = 'w+'), got {request.space[:20]!r}")
    if request.preview_every < 0:
        errors.append(f"preview_every: must be >= 0 (0 = never), got {request.preview_every}")
    return dict(head=request.head, iterations=iterations, lr=lr, space=space, preview_every=request.preview_every)


def _check_psi(request, errors: list) -> float:
    if not request.HasField("truncation_psi"):
        return 1.0
    psi = request.truncation_psi
    if not (math.isfinite(psi) and 0 <= psi <= 1):
        errors.append(f"truncation_psi: must be in [0, 1] (unset = 1), got {psi:g}")
    return psi


def _check_head_given(head: str, info: SemanticsInfo, errors: list) -> None:
    if not head:
        errors.append(f"head: missing; expected one of {choices(sorted(info.heads))}")


def known_head(head: str, info: SemanticsInfo) -> None:
    """NOT_FOUND for a head the server does not have; FAILED_PRECONDITION where the bundle has no such part at all
    (no segmenter; no head and no segmenter), naming how to add it."""
    if head not in info.heads:
        error = unknown_head(head, [h for h in info.heads if h != SEGMENTER], SEGMENTER in info.heads)
        raise NotFound(error.args[0]) if isinstance(error, KeyError) else error
