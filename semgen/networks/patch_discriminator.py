"""The patch critic IMAGINE trains against a single reference image (a PatchGAN/SinGAN-style
fully convolutional critic: every output cell scores one ~22 px patch of a 64 px image).

Downsampling is by average pooling, not strided convolution: the images are optimised through
this critic's gradient, and a strided convolution's gradient paints a checkerboard on them.
No normalisation layers: it is trained with WGAN-GP, whose per-sample gradient penalty batch
norm would break.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 32, in_channels: int = 3):
        super().__init__()
        self.config = dict(channels=channels, in_channels=in_channels)
        c = channels

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, 1, padding=1), nn.LeakyReLU(0.2, inplace=True)]

        self.body = nn.Sequential(
            *conv(in_channels, c), nn.AvgPool2d(2),  # [B, c, S/2, S/2]
            *conv(c, 2 * c), nn.AvgPool2d(2),  # [B, 2c, S/4, S/4]
            *conv(2 * c, 2 * c),
            nn.Conv2d(2 * c, 1, 1),  # [B, 1, S/4, S/4] one score per patch
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] in [-1, 1] -> patch scores [B, 1, S/4, S/4]."""
        return self.body(x)
