"""Checkpoints of the widely used PyTorch port of StyleGAN2 (a `torch.save` dict: `g_ema`, `latent_avg`, maybe `g`,
`d`, `args`) as this project's StyleGAN2Generator, read with torch.load(weights_only=True): tensors only, no code.

The port does not record its architecture, so it comes from the user (size, style_dim, n_mlp, channel_multiplier,
lr_mlp, the port's own flags) and is checked against every tensor's shape. Its layers are NVlabs' under other
names: style.N (mapping, after a pixel norm), input.input (the constant), conv1 / to_rgb1 (4 px), convs.2k and
convs.2k+1 (up-sampling conv and conv at 8·2^k px), to_rgbs.k, noises.noise_N (the fixed noise); the conv weights
carry a leading batch axis of 1 and toRGB's bias is [1, 3, 1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from semgen.checkpoints import load_exactly
from semgen.networks.stylegan2 import StyleGAN2Generator, resample_filter

W_AVG_SAMPLES = 4096  # z drawn (seed 0) to estimate w_avg when a training checkpoint has no latent_avg


def port_config(size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                lr_mlp: float = 0.01) -> dict:
    """StyleGAN2Generator's kwargs for the port's flags: its widths are min(512, 16384·channel_multiplier / r)."""
    return {"z_dim": style_dim, "c_dim": 0, "w_dim": style_dim, "img_resolution": size, "img_channels": 3,
            "mapping_layers": n_mlp, "mapping_lr_multiplier": lr_mlp, "channel_base": 16384 * channel_multiplier,
            "channel_max": 512, "conv_clamp": None}


def _layer(key: str) -> tuple[str, str] | None:
    """(NVlabs' prefix, the rest of the key) for a key of a port layer (conv1.*, to_rgb1.*, convs.N.*,
    to_rgbs.N.*); None for any other key."""
    head, _, rest = key.partition(".")
    if head == "conv1":
        return "synthesis.b4.conv1", rest
    if head == "to_rgb1":
        return "synthesis.b4.torgb", rest
    index, _, sub = rest.partition(".")
    if head == "convs" and index.isdigit():
        return f"synthesis.b{2 ** (3 + int(index) // 2)}.conv{int(index) % 2}", sub
    if head == "to_rgbs" and index.isdigit():
        return f"synthesis.b{2 ** (3 + int(index))}.torgb", sub
    return None


# within a layer: the port's key -> (NVlabs' key, how the tensor is reshaped)
SUBKEYS = {"conv.weight": ("weight", lambda t: t.squeeze(0)),
           "conv.modulation.weight": ("affine.weight", None), "conv.modulation.bias": ("affine.bias", None),
           "noise.weight": ("noise_strength", lambda t: t.reshape([])),
           "activate.bias": ("bias", None), "bias": ("bias", lambda t: t.reshape(-1))}
FILTERS = ("conv.blur.kernel", "upsample.kernel")  # the [1, 3, 3, 1] filter x 4, fixed: checked, not loaded


def rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The port's state dict under NVlabs' names (a key that is not the port's is kept, to be named unexpected)."""
    out = {}
    expected_filter = resample_filter() * 4
    for key, tensor in state.items():
        if key.startswith("style.") and key.count(".") == 2 and key.split(".")[1].isdigit():
            _, i, what = key.split(".")
            out[f"mapping.fc{int(i) - 1}.{what}"] = tensor
        elif key == "input.input":
            out["synthesis.b4.const"] = tensor.squeeze(0)
        elif key.startswith("noises.noise_") and key[len("noises.noise_"):].isdigit():
            j = int(key[len("noises.noise_"):])
            layer = "synthesis.b4.conv1" if j == 0 else f"synthesis.b{2 ** (2 + (j + 1) // 2)}.conv{(j + 1) % 2}"
            out[f"{layer}.noise_const"] = tensor.reshape(tensor.shape[-2:])
        elif any(key.endswith("." + f) for f in FILTERS):
            if tensor.shape != expected_filter.shape or not torch.allclose(tensor, expected_filter):
                raise ValueError(f"{key}: a resampling filter other than [1, 3, 3, 1] is not reproduced here")
        elif (layer := _layer(key)) is not None and layer[1] in SUBKEYS:
            name, reshape = SUBKEYS[layer[1]]
            out[f"{layer[0]}.{name}"] = reshape(tensor) if reshape else tensor
        else:
            out[key] = tensor
    return out


def port_key(name: str) -> str:
    """The port's name of one of StyleGAN2Generator's tensors (for messages): rename's inverse."""
    parts = name.split(".")
    if parts[0] == "mapping":
        return "latent_avg" if parts[1] == "w_avg" else f"style.{int(parts[1][2:]) + 1}.{parts[2]}"
    if name == "synthesis.b4.const":
        return "input.input"
    if len(parts) < 4 or not parts[1][1:].isdigit():
        return name
    k = int(parts[1][1:]).bit_length() - 4  # the block index from 8 px on (-1: the 4 px block)
    layer, sub = parts[2], ".".join(parts[3:])
    if sub == "noise_const":
        return "noises.noise_0" if k < 0 else f"noises.noise_{2 * k + 1 + (layer == 'conv1')}"
    if layer == "torgb":
        prefix = "to_rgb1" if k < 0 else f"to_rgbs.{k}"
    else:
        prefix = "conv1" if k < 0 else f"convs.{2 * k + (layer == 'conv1')}"
    subs = {"weight": "conv.weight", "affine.weight": "conv.modulation.weight",
            "affine.bias": "conv.modulation.bias", "noise_strength": "noise.weight",
            "bias": "bias" if layer == "torgb" else "activate.bias"}
    return f"{prefix}.{subs.get(sub, sub)}"


def generator_from_port(path: str | Path, size: int, style_dim: int = 512, n_mlp: int = 8,
                        channel_multiplier: int = 2, lr_mlp: float = 0.01,
                        network: str = "g_ema") -> tuple[StyleGAN2Generator, dict, str]:
    """(StyleGAN2Generator in eval mode, its config, where w_avg came from). ValueError names an unreadable file,
    a missing network, or a tensor whose name or shape does not fit the flags."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch.save file, or one holding more than tensors and plain data
        raise ValueError(f"{path}: cannot read as a torch.save checkpoint of tensors: {e}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(network), dict):
        have = sorted(k for k, v in checkpoint.items() if isinstance(v, dict)) if isinstance(checkpoint, dict) else []
        raise ValueError(f"{path}: no state dict {network!r} (it has {', '.join(have) or 'none'})")
    config = port_config(size, style_dim, n_mlp, channel_multiplier, lr_mlp)
    model = StyleGAN2Generator(**config)
    state = rename(checkpoint[network])
    for name, tensor in model.state_dict().items():  # the fixed filters are not in the port's dict
        if name.endswith("resample_filter"):
            state[name] = tensor
    w_avg_from = "latent_avg"
    if isinstance(checkpoint.get("latent_avg"), torch.Tensor):
        state["mapping.w_avg"] = checkpoint["latent_avg"].reshape(-1)
    else:
        state["mapping.w_avg"] = torch.zeros(style_dim)
        w_avg_from = f"the mean w of {W_AVG_SAMPLES} z (seed 0): the checkpoint has no latent_avg"
    layout = (f"{path}: {network} does not match the port's layout for size {size}, style_dim {style_dim}, n_mlp "
              f"{n_mlp}, channel_multiplier {channel_multiplier}")
    load_exactly(model, state, layout, port_key)
    if w_avg_from != "latent_avg":
        z = torch.randn(W_AVG_SAMPLES, style_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.mapping.w_avg.copy_(model.mapping(z)[:, 0].mean(dim=0))
    return model, config, w_avg_from
