"""Semantic Pyramid generator and discriminator (Shocher et al., §3.1).

The generator mirrors the classifier: the noise z enters at the top (fc8/fc7 side), and every
level of the pyramid has a block whose resolution equals that level's feature map. At each level
the classifier's features are multiplied by the level's mask, passed through a conv (linear for
fc levels) and added to the block's activations; the mask itself is concatenated as an extra
channel so later layers can tell "masked" from "empty". Batch norms are class-conditional.

Version 2 options (the config records them; without them a checkpoint is version 1):
  upsample="bilinear"  smooth ×2 upsampling: nearest upsampling repeats every feature cell as a
                       block, which the convolutions turn into a grid texture;
  noise=True           a noise map per block, derived from z by a fixed random projection (so the
                       graph stays deterministic: same z, same image), scaled per channel (learned,
                       starting at 0). z otherwise reaches only the 2×2 base map and the batch-norm
                       gains, which vary colour and light but not where things are;
  padding="reflect"    the 3×3 convolutions pad by mirroring the map instead of with zeros, which
                       marks the border (the deep levels draw a fixed stripe frame along it). Tried
                       on the shipped generator, it raised grid_artifact; kept as an option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from semgen.networks.classifier import SPATIAL_LEVELS


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine parameters; gain and bias come from the condition vector."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.gain.bias)
        nn.init.zeros_(self.bias.bias)

    def forward(self, x, cond):
        g = 1 + self.gain(cond)[:, :, None, None]
        b = self.bias(cond)[:, :, None, None]
        return self.bn(x) * g + b


class UpBlock(nn.Module):
    """Residual block, ×2 upsampling: CBN → ReLU → up → conv (+ noise) → CBN → ReLU → conv, plus a 1×1 skip."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, upsample: str = "nearest",
                 noise_side: int = 0, z_dim: int = 0, padding: str = "zeros"):
        super().__init__()
        self.upsample = upsample
        self.bn1 = ConditionalBatchNorm(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode=padding)
        self.bn2 = ConditionalBatchNorm(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode=padding)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        self.noise_side = noise_side
        if noise_side:
            # [side², z_dim] with unit-variance rows: each pixel's noise is a fixed projection of z ~ N(0, 1)
            projection = torch.randn(noise_side**2, z_dim, generator=torch.Generator().manual_seed(noise_side))
            self.register_buffer("noise_projection", projection / z_dim**0.5)
            self.noise_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def _up(self, x):
        if self.upsample == "bilinear":
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x, cond, z=None):
        h = self.conv1(self._up(F.relu(self.bn1(x, cond))))
        if self.noise_side:
            side = self.noise_side
            noise = (z @ self.noise_projection.t()).view(z.shape[0], 1, side, side)
            h = h + self.noise_scale * noise
        h = self.conv2(F.relu(self.bn2(h, cond)))
        return h + self.skip(self._up(x))


class PyramidGenerator(nn.Module):
    """G(z, features, masks, class) -> image [B, 3, S, S] in [-1, 1].

    level_channels: channels of conv1..conv5 features; fc_dims: sizes of fc7 and fc8 features.
    gen_channels: generator channels at the resolutions of conv5, conv4, conv3, conv2, conv1 and the output.
    """

    def __init__(
        self,
        image_size: int = 64,
        num_classes: int = 8,
        z_dim: int = 64,
        embed_dim: int = 64,
        level_channels: tuple[int, ...] = (24, 48, 96, 128, 192),
        fc_dims: tuple[int, int] = (256, 8),
        hidden_dim: int = 256,
        gen_channels: tuple[int, ...] = (128, 96, 64, 48, 32, 16),
        class_names: tuple[str, ...] = (),
        upsample: str = "nearest",
        noise: bool = False,
        padding: str = "zeros",
    ):
        super().__init__()
        self.config = dict(
            image_size=image_size,
            num_classes=num_classes,
            z_dim=z_dim,
            embed_dim=embed_dim,
            level_channels=tuple(level_channels),
            fc_dims=tuple(fc_dims),
            hidden_dim=hidden_dim,
            gen_channels=tuple(gen_channels),
            class_names=tuple(class_names),
        )
        if upsample != "nearest" or noise:  # version 2; a version-1 config stays exactly as it was
            self.config.update(upsample=upsample, noise=bool(noise))
        if padding != "zeros":
            self.config.update(padding=padding)
        if len(level_channels) != 5 or len(gen_channels) != 6:
            raise ValueError("level_channels needs 5 entries (conv1..conv5), gen_channels 6")
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        if padding == "reflect" and image_size < 64:
            raise ValueError(f"padding 'reflect' mirrors one pixel, so the 1/32-size base map needs 2 of them: "
                             f"image_size must be at least 64, got {image_size}")
        self.image_size = image_size
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.class_names = tuple(class_names)
        self.base = image_size // 32  # side of conv5 features
        cond_dim = z_dim + embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim)

        # fc side: z (+class) -> hidden; fc8 and fc7 features (+ their scalar mask) are added in.
        self.from_z = nn.Linear(cond_dim, hidden_dim)
        self.from_fc8 = nn.Linear(fc_dims[1] + 1, hidden_dim, bias=False)
        self.fc_mid = nn.Linear(hidden_dim, hidden_dim)
        self.from_fc7 = nn.Linear(fc_dims[0] + 1, hidden_dim, bias=False)
        self.to_map = nn.Linear(hidden_dim, gen_channels[0] * self.base**2)

        # conv side, deepest first: conv5 at the base resolution ... conv1 at S/2.
        deep_first = list(reversed(level_channels))
        self.fuse = nn.ModuleList(nn.Conv2d(c, gen_channels[i], 3, padding=1, bias=False, padding_mode=padding)
                                  for i, c in enumerate(deep_first))
        self.blocks = nn.ModuleList(
            UpBlock(gen_channels[i] + 1, gen_channels[i + 1], cond_dim, upsample,
                    noise_side=self.base * 2 ** (i + 1) if noise else 0, z_dim=z_dim, padding=padding)
            for i in range(5))
        self.out_bn = nn.BatchNorm2d(gen_channels[-1])
        self.to_rgb = nn.Conv2d(gen_channels[-1], 3, 3, padding=1, padding_mode=padding)

    @classmethod
    def mirroring(cls, classifier, **kwargs) -> "PyramidGenerator":
        """A generator whose level inputs match `classifier`'s feature shapes."""
        shapes = classifier.level_shapes()
        return cls(
            image_size=classifier.image_size,
            num_classes=classifier.num_classes,
            level_channels=tuple(shapes[level][0] for level in SPATIAL_LEVELS),
            fc_dims=(shapes["fc7"][0], shapes["fc8"][0]),
            **kwargs,
        )

    def forward(self, z, features: dict, masks: dict, labels):
        """z [B, z_dim]; features {level: tensor}; masks {level: [B, 1, h, w] (conv) or [B, 1] (fc)};
        labels int64 [B]. A level missing from `masks` is fully masked out (same as an all-zero
        mask: the fusion layers have no bias, so a masked-out level adds exactly nothing)."""
        batch = z.shape[0]
        cond = torch.cat([z, self.embed(labels)], 1)  # [B, cond_dim]
        h = self.from_z(cond) + self.from_fc8(self._masked_vector(features, masks, "fc8", batch, z))
        h = self.fc_mid(F.relu(h)) + self.from_fc7(self._masked_vector(features, masks, "fc7", batch, z))
        channels = self.to_map.out_features // self.base**2  # explicit: ONNX export needs the channel count
        x = self.to_map(F.relu(h)).view(batch, channels, self.base, self.base)  # [B, C, S/32, S/32]
        for i, level in enumerate(reversed(SPATIAL_LEVELS)):
            if level in masks:
                m = masks[level]
                x = x + self.fuse[i](features[level] * m)
            else:
                m = x.new_zeros(batch, 1, x.shape[2], x.shape[3])
            x = self.blocks[i](torch.cat([x, m], 1), cond, z)  # resolution doubles
        return torch.tanh(self.to_rgb(F.relu(self.out_bn(x))))  # [B, 3, S, S]

    def _masked_vector(self, features, masks, level, batch, like):
        size = self.from_fc8.in_features - 1 if level == "fc8" else self.from_fc7.in_features - 1
        if level not in masks:
            return like.new_zeros(batch, size + 1)
        m = masks[level]
        return torch.cat([features[level] * m, m], 1)


class DownBlock(nn.Module):
    """Residual block with spectral norm, ×2 average-pool downsampling."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + F.avg_pool2d(self.skip(x), 2)


class PyramidDiscriminator(nn.Module):
    """Class-conditional projection discriminator: D(x, y) = ψ(φ(x)) + <embed(y), φ(x)>."""

    def __init__(
        self,
        image_size: int = 64,
        num_classes: int = 8,
        channels: tuple[int, ...] = (16, 32, 64, 128),
    ):
        super().__init__()
        self.config = dict(image_size=image_size, num_classes=num_classes, channels=tuple(channels))
        blocks, c_in = [], 3
        for i, c in enumerate(channels):
            blocks.append(DownBlock(c_in, c, first=i == 0))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, c_in))

    def forward(self, x, labels):
        """x [B, 3, S, S], labels [B] -> scores [B]."""
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # [B, C]
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)

