"""The off-the-shelf attribute predictor HiGAN scores images with: one small CNN that regresses every
scene attribute (layout, objects, attributes, colour scheme) from an image.

It is trained on standardised targets; `mean` and `std` are part of the config, so `forward` returns
attributes in the renderer's own units (horizon as a fraction of the height, tree count, ...).
Inputs are RGB in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn


class AttributePredictor(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        attribute_names: tuple[str, ...] = (),
        levels: tuple[str, ...] = (),
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
        channels: tuple[int, ...] = (32, 64, 96, 128),
    ):
        super().__init__()
        n = len(attribute_names)
        if not (len(levels) == len(mean) == len(std) == n) or n == 0:
            raise ValueError("attribute_names, levels, mean and std must have one entry per attribute")
        self.config = dict(image_size=image_size, attribute_names=tuple(attribute_names), levels=tuple(levels),
                           mean=tuple(mean), std=tuple(std), channels=tuple(channels))
        self.image_size = image_size
        self.attribute_names, self.levels = tuple(attribute_names), tuple(levels)
        blocks, c_in = [], 3
        for c in channels:  # each stage halves the resolution
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, n)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] -> standardised attributes [B, A] (what training regresses)."""
        return self.head(self.body(x).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] -> attributes [B, A] in the renderer's units."""
        return self.standardised(x) * self.std + self.mean
