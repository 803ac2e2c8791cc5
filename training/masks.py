"""Training masks (Semantic Pyramid §3.2).

Per sample: one level is chosen at random and passed whole. With probability p_crop the
shallower conv levels are passed too, except inside a random crop, so the generator learns to
fill a region from deep features while keeping the rest (what re-painting uses). Levels deeper
than the chosen one are always zero.

The selected level always passes whole, so the reference's deeper conv features are a function of
what the generator was given: `deeper_conv_masks` marks them for an optional reconstruction term.
"""

from __future__ import annotations

import torch

from semgen.networks.classifier import LEVELS


def random_crop_masks(n: int, size: int, generator: torch.Generator, min_frac=0.25, max_frac=0.6) -> torch.Tensor:
    """[n, size, size] with ones everywhere except a random box (0)."""
    frac = torch.empty(n, 2).uniform_(min_frac, max_frac, generator=generator)
    side = (frac * size).round().long().clamp(min=1)
    top = (torch.rand(n, generator=generator) * (size - side[:, 0] + 1)).long()
    left = (torch.rand(n, generator=generator) * (size - side[:, 1] + 1)).long()
    rows = torch.arange(size)[None, :, None]
    cols = torch.arange(size)[None, None, :]
    inside = (rows >= top[:, None, None]) & (rows < (top + side[:, 0])[:, None, None])
    inside = inside & (cols >= left[:, None, None]) & (cols < (left + side[:, 1])[:, None, None])
    return (~inside).float()


def sample_training_masks(level_shapes: dict, n: int, image_size: int, p_crop: float,
                          generator: torch.Generator, levels: tuple[int, ...] = ()
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Returns (masks {level: [n,1,h,w] or [n,1]}, selected level index [n]); `levels`: the level
    indices to select from (empty: every level)."""
    pool = torch.tensor(levels) if levels else torch.arange(len(LEVELS))
    selected = pool[torch.randint(len(pool), (n,), generator=generator)]
    use_crop = torch.rand(n, generator=generator) < p_crop
    keep = random_crop_masks(n, image_size, generator)[:, None]  # [n, 1, S, S]
    masks = {}
    for i, level in enumerate(LEVELS):
        on = (selected == i).float()
        shape = level_shapes[level]
        if len(shape) == 1:
            masks[level] = on[:, None]
            continue
        # conv level: whole map if selected; the crop-holed map if shallower and cropping
        small = torch.nn.functional.adaptive_avg_pool2d(keep, shape[1:]).floor()  # cell fully outside crop
        shallower = ((selected > i) & use_crop).float()
        masks[level] = on[:, None, None, None] + shallower[:, None, None, None] * small
    return masks, selected


def deeper_conv_masks(level_shapes: dict, selected: torch.Tensor) -> dict[str, torch.Tensor]:
    """{conv level: [n, 1, h, w]}: ones for the samples whose selected level is shallower than this one.
    fc levels are left out: fc8 is the class, which re-labeling must be free to change."""
    masks = {}
    for i, level in enumerate(LEVELS):
        shape = level_shapes[level]
        if len(shape) == 3:
            on = (selected < i).float()[:, None, None, None]
            masks[level] = on.expand(-1, 1, *shape[1:])
    return masks
