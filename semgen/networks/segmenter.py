"""The supervisor segmenter: a small UNet that labels scene images pixel by pixel.

It plays the part of UNet / DeepLabV3 in the linear-semantics paper: it labels generated images
so that heads can be trained and evaluated, and it is one of the predictors SCS can steer with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True),
        )


class UNetSegmenter(nn.Module):
    """image [B, 3, S, S] in [-1, 1] -> class logits [B, num_classes, S, S].

    channels: per depth, from full resolution down (each deeper level halves the resolution).
    """

    def __init__(
        self,
        num_classes: int = 11,
        channels: tuple[int, ...] = (24, 48, 96, 128),
        class_names: tuple[str, ...] = (),
    ):
        super().__init__()
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.config = dict(num_classes=num_classes, channels=tuple(channels), class_names=tuple(class_names))
        self.num_classes, self.class_names = num_classes, tuple(class_names)
        self.down = nn.ModuleList([DoubleConv(a, b) for a, b in zip((3,) + tuple(channels), channels)])
        self.up = nn.ModuleList([DoubleConv(b + a, a) for a, b in zip(channels[:-1], channels[1:])])
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, image):
        skips, x = [], image
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for block, skip in zip(reversed(self.up), reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)
