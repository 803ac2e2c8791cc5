"""A small StyleGAN2-style generator with a layer-wise latent space, and its discriminator.

Mapping network z -> w; the synthesis network takes one w per layer (w+, [B, num_ws, w_dim]),
applies modulated 3×3 convolutions with weight demodulation, adds per-layer noise, and sums
skip to-RGB outputs across resolutions. Truncation pulls w towards a running average.

Modulation scales the input activations instead of the weights, and demodulation scales the
outputs: the same result as StyleGAN2's per-sample weights, but one ordinary convolution for
the whole batch (fast on CPU). Weights use the equalised learning rate (scaled at run time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NOISE_MODES = ("const", "random", "none")


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling (equalised learning rate) and a bias init."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x):
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


class EqualConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, w_dim]: pixel-normalised z through an MLP with a low learning rate."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, lr_mul: float = 0.01):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, act=True) for a, b in zip(dims, dims[1:])])

    def forward(self, z, shift=None):
        """shift: added to the normalised z (a class embedding in a class-conditional generator)."""
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        return self.layers(z if shift is None else z + shift)


class ModulatedConv(nn.Module):
    """Conv whose input channels are scaled by a style from w, optionally demodulated, optionally ×2 up."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, w_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x, w):
        style = self.affine(w)  # [B, in]
        weight = self.weight * self.scale
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.conv2d(x * style[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:  # 1 / ‖w·s‖ per sample and output channel, as if the weights were modulated
            d = torch.rsqrt(style.pow(2) @ weight.pow(2).sum((2, 3)).t() + 1e-8)  # [B, out]
            x = x * d[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated conv -> + noise · strength -> + bias -> leaky ReLU (gain √2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool):
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, 3, w_dim, upsample=upsample)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.resolution = resolution

    def forward(self, x, w, noise_mode: str):
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """G(z) -> image [B, 3, S, S] in about [-1, 1]; `synthesis(ws)` exposes every layer's features.

    channels: synthesis channels at 4, 8, 16, ... up to image_size (one entry per resolution).
    num_classes > 0: trained class-conditionally without a class input: z's first coordinate picks
    the class (`class_of`: equal shares of N(0, 1)), whose learned embedding is added to the
    normalised z. G(z) stays a function of z alone (same API, same graphs); the conditional
    discriminator makes every class of the training data appear in its share of z, where an
    unconditional GAN is free to drop classes it finds hard.
    Layers: one conv at 4×4, then two per resolution (the first upsamples); layer i reads ws[:, i],
    and each resolution's to-RGB reads the w of the layer after its last conv, so
    num_ws = num_layers + 1.
    """

    def __init__(
        self,
        image_size: int = 64,
        z_dim: int = 128,
        w_dim: int = 128,
        mapping_layers: int = 4,
        channels: tuple[int, ...] = (128, 128, 64, 32, 16),
        num_classes: int = 0,
    ):
        super().__init__()
        resolutions = [4 * 2**i for i in range(len(channels))]
        if resolutions[-1] != image_size:
            raise ValueError(f"channels has {len(channels)} entries (up to {resolutions[-1]} px), image_size is {image_size}")
        self.config = dict(image_size=image_size, z_dim=z_dim, w_dim=w_dim, mapping_layers=mapping_layers,
                           channels=tuple(channels))
        if num_classes:  # an unconditional config stays exactly as it was
            self.config["num_classes"] = num_classes
        self.image_size, self.z_dim, self.w_dim = image_size, z_dim, w_dim
        self.num_classes = num_classes
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        if num_classes:
            self.class_embed = nn.Parameter(torch.zeros(num_classes, z_dim))
        self.const = nn.Parameter(torch.randn(1, channels[0], 4, 4))
        layers, to_rgb, rgb_after = [SynthesisLayer(channels[0], channels[0], w_dim, 4, False)], [ToRGB(channels[0], w_dim)], [0]
        for res, c_in, c_out in zip(resolutions[1:], channels, channels[1:]):
            layers += [SynthesisLayer(c_in, c_out, w_dim, res, True), SynthesisLayer(c_out, c_out, w_dim, res, False)]
            to_rgb.append(ToRGB(c_out, w_dim))
            rgb_after.append(len(layers) - 1)
        self.layers, self.to_rgb = nn.ModuleList(layers), nn.ModuleList(to_rgb)
        self.rgb_after = rgb_after  # index of the layer each to-RGB follows
        self.num_layers = len(layers)
        self.num_ws = self.num_layers + 1
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def layer_channels(self) -> list[int]:
        return [layer.conv.weight.shape[0] for layer in self.layers]

    def layer_resolutions(self) -> list[int]:
        return [layer.resolution for layer in self.layers]

    def class_of(self, z):
        """z [B, z_dim] -> the class int64 [B] its first coordinate picks: Φ(z₀) cut into equal shares."""
        share = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
        return (share * self.num_classes).floor().clamp(0, self.num_classes - 1).long()

    def mapping_w(self, z, psi: float = 1.0):
        """z [B, z_dim] -> w [B, w_dim], truncated towards w_avg by psi (1 = none)."""
        w = self.mapping(z, self.class_embed[self.class_of(z)] if self.num_classes else None)
        return self.w_avg.lerp(w, psi) if psi != 1.0 else w

    def broadcast(self, w):
        """w [B, w_dim] -> w+ [B, num_ws, w_dim] (the same w at every layer)."""
        return w[:, None, :].expand(-1, self.num_ws, -1)

    def synthesis(self, ws, noise_mode: str = "const", return_features: bool = False):
        """ws [B, num_ws, w_dim] -> image [B, 3, S, S] (and the list of each layer's output)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        features, image, rgb_i = [], None, 0
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
            features.append(x)
            if i == self.rgb_after[rgb_i]:
                rgb = self.to_rgb[rgb_i](x, ws[:, i + 1])
                image = rgb if image is None else F.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False) + rgb
                rgb_i += 1
        return (image, features) if return_features else image

    def forward(self, z, psi: float = 1.0, noise_mode: str = "const", return_features: bool = False):
        return self.synthesis(self.broadcast(self.mapping_w(z, psi)), noise_mode, return_features)


class DiscriminatorBlock(nn.Module):
    """Residual: conv 3×3 -> conv 3×3 -> avg-pool ×½, plus a pooled 1×1 skip, summed with gain 1/√2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.2) * math.sqrt(2)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), 0.2) * math.sqrt(2), 2)
        return (h + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


class StyleDiscriminator(nn.Module):
    """D(image [B, 3, S, S], labels [B] | None) -> logit [B]; channels listed from the image resolution
    down to 4×4. num_classes > 0 adds a projection term <embed(label), features> (zero at the start)."""

    def __init__(self, image_size: int = 64, channels: tuple[int, ...] = (16, 32, 64, 128, 128), mbstd_group: int = 4,
                 num_classes: int = 0):
        super().__init__()
        if 4 * 2 ** (len(channels) - 1) != image_size:
            raise ValueError(f"channels must have one entry per resolution from {image_size} down to 4")
        self.config = dict(image_size=image_size, channels=tuple(channels), mbstd_group=mbstd_group)
        if num_classes:
            self.config["num_classes"] = num_classes
            self.class_embed = nn.Parameter(torch.zeros(num_classes, channels[-1]))
        self.num_classes = num_classes
        self.from_rgb = EqualConv2d(3, channels[0], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(a, b) for a, b in zip(channels, channels[1:])])
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(channels[-1] + 1, channels[-1], 3)
        self.fc = EqualLinear(channels[-1] * 16, channels[-1], act=True)
        self.out = EqualLinear(channels[-1], 1)

    def minibatch_std(self, x):
        """Append one channel: the std of features over groups of samples (lets D see diversity)."""
        b, c, h, w = x.shape
        g = min(self.mbstd_group, b)
        while b % g:
            g -= 1
        y = x.reshape(g, b // g, c, h, w).std(0, unbiased=False).mean((1, 2, 3))  # [b // g]
        y = y.repeat(g)[:, None, None, None].expand(b, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, image, labels=None):
        x = F.leaky_relu(self.from_rgb(image), 0.2) * math.sqrt(2)
        x = self.blocks(x)
        x = F.leaky_relu(self.conv(self.minibatch_std(x)), 0.2) * math.sqrt(2)
        h = self.fc(x.flatten(1))
        logit = self.out(h).squeeze(1)
        if self.num_classes:
            logit = logit + (self.class_embed[labels] * h).sum(1) / math.sqrt(h.shape[1])
        return logit
