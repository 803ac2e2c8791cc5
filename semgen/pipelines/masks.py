"""Per-level masks for the pyramid generator.

A mask for a conv level is [B, 1, h, w] at that level's resolution; for fc7/fc8 it is [B, 1].
Region masks are given in image space ([S, S], 1 = pass the reference's features) and brought
to each level's resolution by area averaging, so a half-covered cell passes half its feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semgen.networks.classifier import LEVELS


def check_levels(levels) -> None:
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"level: unknown level {level!r}; expected one of {', '.join(LEVELS)}")


def level_masks(level_shapes: dict, regions: dict, batch: int) -> dict[str, torch.Tensor]:
    """regions {level: None (whole map) or float [S, S] image-space mask} -> generator masks."""
    check_levels(regions)
    masks = {}
    for level, region in regions.items():
        shape = level_shapes[level]
        if len(shape) == 1:  # fc level: one number per sample
            value = 1.0 if region is None else float(region.mean())
            masks[level] = torch.full((batch, 1), value)
        elif region is None:
            masks[level] = torch.ones(batch, 1, *shape[1:])
        else:
            small = F.adaptive_avg_pool2d(region[None, None].float(), shape[1:])
            masks[level] = small.expand(batch, 1, *shape[1:]).contiguous()
    return masks
