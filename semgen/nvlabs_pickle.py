"""NVlabs network pickles (stylegan2-ada-pytorch, stylegan3: `{'G_ema': ..., ...}` in a .pkl) read as plain data,
never run.

Their classes are "persistent": each object is pickled with the Python source of its module, and the NVlabs
loader executes that source when it unpickles. Here nothing of the file is executed: the unpickler resolves only
the globals a tensor checkpoint needs (tensor and storage rebuilds, OrderedDict, numpy scalars) and turns each
persistent object into a `PersistentObject` (its class name, the init kwargs it was built with, its parameters,
buffers and submodules); any other global is refused with an error that names it.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_exactly
from semgen.networks.stylegan2 import StyleGAN2Generator

try:  # numpy 2 keeps it in _core; older pickles name numpy.core, newer ones numpy._core
    from numpy._core.multiarray import scalar as numpy_scalar
except ImportError:  # numpy 1
    from numpy.core.multiarray import scalar as numpy_scalar


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """The pickle names a global that a tensor checkpoint does not need: it is not loaded, nothing ran."""


@dataclass
class PersistentObject:
    """One object of an NVlabs persistent class, as data: what its module source would have rebuilt."""
    class_name: str
    init_args: tuple
    init_kwargs: dict
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    modules: dict[str, PersistentObject | None] = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)  # the rest of its __dict__ (z_dim, w_dim, ...)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and buffers of this object and every submodule, by dotted name (as torch would name them)."""
        out = {prefix + k: v for k, v in {**self.parameters, **self.buffers}.items() if v is not None}
        for name, module in self.modules.items():
            if module is not None:
                out.update(module.state_dict(f"{prefix}{name}."))
        return out


def _persistent_object(meta: dict) -> PersistentObject:
    """Stands for torch_utils.persistence._reconstruct_persistent_obj: the meta as data, its module_src unread."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise RefusedPickle("a persistent object without a class meta (type 'class' and a state dict)")
    state = dict(meta["state"])
    modules = state.pop("_modules", {})
    bad = [name for name, m in modules.items() if m is not None and not isinstance(m, PersistentObject)]
    if bad:  # a plain torch.nn module would have needed its class imported, which find_class refused already
        raise RefusedPickle(f"{meta.get('class_name')}: submodules {bad} are not persistent objects")
    return PersistentObject(class_name=str(meta.get("class_name")), init_args=tuple(state.pop("_init_args", ())),
                            init_kwargs=dict(state.pop("_init_kwargs", {})),
                            parameters=dict(state.pop("_parameters", {})), buffers=dict(state.pop("_buffers", {})),
                            modules=dict(modules), attributes=state)


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks) -> torch.Tensor:
    return data  # weights only: no autograd state, no hooks


def _load_storage(data: bytes):
    """Stands for torch.storage._load_from_bytes, which would torch.load the bytes with pickles allowed."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
}


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise RefusedPickle(f"{module}.{name}: not allowed in a network pickle (only tensors, storages, "
                                f"persistent objects as data, OrderedDict and numpy scalars are read); nothing ran")
        return found

    def persistent_load(self, pid):
        raise RefusedPickle(f"persistent id {pid!r}: not a network pickle (a torch.save zip? read it with "
                            f"torch.load(weights_only=True))")


def read_network_pickle(path: str | Path) -> dict:
    """The top-level dict of an NVlabs network pickle, its networks as PersistentObjects. Raises RefusedPickle for
    a global outside ALLOWED (naming it) and ValueError for a file that is not such a pickle."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            data = _DataOnly(f).load()
        except RefusedPickle:
            raise
        except Exception as e:  # truncated, not a pickle, a reduce that fails on our stand-ins
            raise ValueError(f"{path}: not a readable network pickle: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a network pickle holds a dict (G, D, G_ema, ...), this one a {type(data).__name__}")
    return data


# NVlabs' Generator init kwargs this project's StyleGAN2Generator reproduces, with their defaults; any other value
# is refused by name rather than approximated, except num_fp16_res, fp16_channels_last and w_avg_beta (CUDA speed
# and training only: any value gives the same outputs here)
MAPPING_DEFAULTS = {"num_layers": 8, "lr_multiplier": 0.01, "embed_features": None, "layer_features": None,
                    "activation": "lrelu", "w_avg_beta": 0.995}
SYNTHESIS_DEFAULTS = {"channel_base": 32768, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None,
                      "architecture": "skip", "resample_filter": [1, 3, 3, 1], "use_noise": True,
                      "activation": "lrelu", "fp16_channels_last": False}

FIXED = {"activation", "architecture", "use_noise", "resample_filter"}  # only their default is reproduced


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def generator_config(obj: PersistentObject, network: str = "G_ema") -> dict:
    """StyleGAN2Generator's constructor kwargs from an NVlabs Generator's init kwargs (ValueError naming what is not
    reproduced: another class, architecture, filter or layer width)."""
    if obj.class_name != "Generator":
        raise ValueError(f"{network}: a {obj.class_name}, not an NVlabs StyleGAN2 Generator")
    kwargs = dict(obj.init_kwargs)
    mapping, synthesis = dict(kwargs.pop("mapping_kwargs", {})), dict(kwargs.pop("synthesis_kwargs", {}))
    m = {**MAPPING_DEFAULTS, **mapping}
    s = {**SYNTHESIS_DEFAULTS, **synthesis}
    w_dim = kwargs.get("w_dim")
    sections = {"mapping_kwargs": (m, MAPPING_DEFAULTS), "synthesis_kwargs": (s, SYNTHESIS_DEFAULTS)}
    unsupported = [f"{name}.{k}={v!r}" for name, (given, defaults) in sections.items() for k, v in given.items()
                   if k not in defaults or (k in FIXED and _plain(v) != defaults[k])]
    unsupported += [f"mapping_kwargs.{k}={m[k]!r}" for k in ("embed_features", "layer_features")
                    if m[k] not in (None, w_dim)]
    unknown = sorted(set(kwargs) - {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"})
    unsupported += [f"{k}={kwargs[k]!r}" for k in unknown]
    if unsupported:
        raise ValueError(f"{network}: not reproduced here: {', '.join(unsupported)} (StyleGAN2 with NVlabs' "
                         f"defaults for these is; StyleGAN3 generators are not)")
    return {"z_dim": kwargs["z_dim"], "c_dim": kwargs.get("c_dim", 0), "w_dim": w_dim,
            "img_resolution": kwargs["img_resolution"], "img_channels": kwargs.get("img_channels", 3),
            "mapping_layers": m["num_layers"], "mapping_lr_multiplier": m["lr_multiplier"],
            "channel_base": s["channel_base"], "channel_max": s["channel_max"], "conv_clamp": s["conv_clamp"]}


def generator_from_pickle(path: str | Path, network: str = "G_ema") -> tuple[StyleGAN2Generator, dict]:
    """(StyleGAN2Generator in eval mode with the pickle's weights, its constructor config). ValueError names a
    missing network, a setting not reproduced, or a tensor whose name or shape does not fit."""
    networks = read_network_pickle(path)
    if not isinstance(networks.get(network), PersistentObject):
        have = sorted(k for k, v in networks.items() if isinstance(v, PersistentObject))
        raise ValueError(f"{path}: no network {network!r} (it has {', '.join(have) or 'none'})")
    return generator_from_object(networks[network], f"{path}: {network}")


def generator_from_object(obj: PersistentObject, source: str) -> tuple[StyleGAN2Generator, dict]:
    config = generator_config(obj, source)
    model = StyleGAN2Generator(**config)
    layout = f"{source} does not match the StyleGAN2 generator its init kwargs describe"
    return load_exactly(model, obj.state_dict(), layout), config
