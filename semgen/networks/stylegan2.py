"""The StyleGAN2 generator as NVlabs' stylegan2-ada-pytorch builds it, so that users' checkpoints load by name and
give NVlabs' outputs: mapping z [+ c] -> w (lr multiplier, w_avg, truncation) and a skip synthesis network of
modulated / demodulated convs with the [1, 3, 3, 1] resampling filter, per-layer noise and toRGB at every block.

Parameter and buffer names are NVlabs' (mapping.fc0.weight, synthesis.b8.conv0.affine.bias, ...), so a state dict
read from their pickle (semgen/nvlabs_pickle.py) loads as it is. Written here from the published architecture;
layers NVlabs runs in fp16 on a GPU (num_fp16_res) run in fp32 here, as their force_fp32 does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)  # NVlabs' bias_act gain for lrelu (slope 0.2)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def resample_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable FIR filter as a 2D kernel summing to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int], gain: float) -> torch.Tensor:
    """Pads x [N, C, H, W] by (left, right, top, bottom) and convolves each channel with f * gain (f symmetric)."""
    n, c = x.shape[:2]
    x = F.pad(x, list(pad))
    # every channel as its own image through one 1-channel filter: no channel count in the weight, so a traced
    # graph keeps a known kernel shape
    y = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), (f * gain).to(x.dtype).flip([0, 1])[None, None])
    return y.reshape(n, c, *y.shape[2:])


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 up-sampling: zeros between the samples, then the filter with gain 4 (NVlabs' upfirdn2d.upsample2d)."""
    n, c, h, w = x.shape
    x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, 1, 0, 0, 0, 1]).reshape(n, c, 2 * h, 2 * w)
    fw = f.shape[-1]
    return fir(x, f, ((fw + 1) // 2, (fw - 2) // 2, (fw + 1) // 2, (fw - 2) // 2), gain=4.0)


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr / sqrt(in)).T + b * lr): the equalized-learning-rate dense layer."""

    def __init__(self,
                 in_features: int,
                 out_features: int,
                 activation: str = "linear",  # or "lrelu"
                 lr_multiplier: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return F.leaky_relu(x.matmul(w.t()) + b, 0.2) * LRELU_GAIN


class MappingNetwork(nn.Module):
    def __init__(self,
                 z_dim: int,
                 c_dim: int,
                 w_dim: int,
                 num_ws: int,
                 num_layers: int = 8,
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed = w_dim if c_dim else 0
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        features = [z_dim + embed] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None,
                num_ws: int | None = None) -> torch.Tensor:  # [N, z_dim] -> w+ [N, num_ws, w_dim]
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim:
            if c is None:
                raise ValueError(f"c: this mapping network is class-conditional ({self.c_dim} classes)")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.to(torch.float32)))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, num_ws or self.num_ws, 1)
        if truncation_psi != 1:
            cut = ws.shape[1] if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cut], truncation_psi), ws[:, cut:]], dim=1)
        return ws


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, f: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of weight scaled by each sample's styles over input channels (and demodulated to unit norm per
    output channel), computed as NVlabs' unfused path does: scale the input, one shared conv, scale the output.
    No per-sample weights and no batch-sized groups, so an exported graph takes any batch. `up`: a stride-2
    transposed conv, then the filter."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    x = x * styles.reshape(n, in_ch, 1, 1)
    if not up:
        x = F.conv2d(x, weight, padding=kh // 2)
    else:
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        fw = f.shape[-1]
        pad0 = kh // 2 + (fw + 1) // 2 - (kw - 1)  # NVlabs' conv2d_resample: 1 for a 3x3 kernel and a 4-tap filter
        pad1 = kh // 2 + (fw - 2) // 2 - (kw - 2)
        x = fir(x, f, (pad0, pad1, pad0, pad1), gain=4.0)
    if demodulate:  # 1 / |W * s| per sample and output channel
        w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)
        x = x * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, out_ch, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 w_dim: int,
                 resolution: int,
                 up: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", resample_filter())
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> torch.Tensor:  # [N, I, r/2 or r, ..] -> [N, O, r, r]
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, f=self.resample_filter)
        if noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator,
                                device=x.device if generator is None else generator.device)
            x = x + noise.to(x.device) * self.noise_strength
        x = F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2) * LRELU_GAIN
        # NVlabs clamps after the activation's gain, at conv_clamp itself (their fp16 safety, e.g. 256)
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


class ToRGBLayer(nn.Module):
    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 w_dim: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [N, C, r, r] -> [N, 3, r, r]
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        x = x + self.bias.reshape(1, -1, 1, 1)
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const at 4 px | conv0 up x2), conv1, toRGB added to the up-sampled image so far."""

    def __init__(self,
                 in_channels: int,  # 0 at 4 px: the block starts from its learned constant
                 out_channels: int,
                 w_dim: int,
                 resolution: int,
                 img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", resample_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str = "const", generator=None):
        """ws [N, num_conv + 1, w_dim] (the last is toRGB's, shared with the next block's first conv) ->
        (x, img, each conv's output)."""
        features = []
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        for i, layer in enumerate(self.layers()):
            x = layer(x, ws[:, i], noise_mode, generator)
            features.append(x)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img, features


class SynthesisNetwork(nn.Module):
    def __init__(self,
                 w_dim: int,
                 img_resolution: int,
                 img_channels: int = 3,
                 channel_base: int = 32768,
                 channel_max: int = 512,
                 conv_clamp: float | None = None):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution: a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels, conv_clamp)
            setattr(self, f"b{r}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last toRGB's

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", generator: torch.Generator | None = None,
                return_features: bool = False):
        """w+ [N, num_ws, w_dim] -> image [N, C, R, R] (and every conv layer's output, 4 px first)."""
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode: const, random or none, got {noise_mode!r}")
        ws = ws.to(torch.float32)
        x = img = None
        features, start = [], 0
        for block in self.blocks():
            x, img, block_features = block(x, img, ws[:, start:start + block.num_conv + 1], noise_mode, generator)
            features += block_features
            start += block.num_conv
        return (img, features) if return_features else img


class StyleGAN2Generator(nn.Module):
    """NVlabs' Generator: mapping then synthesis; the constructor takes their init kwargs. It also speaks the
    layer-wise generator interface the linear-semantics pipelines use (image_size, w_avg, layer_channels,
    layer_resolutions, mapping_w, broadcast, synthesis(ws, noise_mode, return_features=True))."""

    def __init__(self,
                 z_dim: int,
                 c_dim: int,
                 w_dim: int,
                 img_resolution: int,
                 img_channels: int = 3,
                 mapping_layers: int = 8,
                 mapping_lr_multiplier: float = 0.01,
                 channel_base: int = 32768,
                 channel_max: int = 512,
                 conv_clamp: float | None = None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.image_size = img_resolution
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def conv_layers(self) -> list[SynthesisLayer]:
        return [layer for block in self.synthesis.blocks() for layer in block.layers()]

    def layer_channels(self) -> list[int]:
        return [layer.weight.shape[0] for layer in self.conv_layers()]

    def layer_resolutions(self) -> list[int]:
        return [layer.resolution for layer in self.conv_layers()]

    def mapping_w(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """z [N, z_dim] -> w [N, w_dim], truncated towards w_avg by psi (1 = none); unconditional generators only."""
        if self.c_dim:
            raise ValueError(f"z: this generator is class-conditional ({self.c_dim} classes); call mapping(z, c)")
        w = self.mapping(z, num_ws=1)[:, 0]
        return self.w_avg.lerp(w, psi) if psi != 1.0 else w

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, w_dim] -> w+ [N, num_ws, w_dim] (the same w at every layer)."""
        return w[:, None, :].expand(-1, self.num_ws, -1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> torch.Tensor:  # [N, z_dim] -> [N, C, R, R] in ~[-1, 1]
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode, generator)
