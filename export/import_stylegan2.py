"""`semgen import stylegan2`: a user's StyleGAN2 checkpoint as a bundle folder (<out>/stylegan/: safetensors +
config.json), which `semgen export onnx --models OUT` and `semgen serve --models OUT` open like the bundled one.

Two formats: NVlabs network pickles (read as data, never run: semgen/nvlabs_pickle.py) and the PyTorch port's
torch.save checkpoints (weights only, architecture from flags: semgen/stylegan2_port.py). Nothing is written unless
the whole import succeeds; an existing generator is replaced only when asked.
"""

from __future__ import annotations

import pickletools
import shutil
import tempfile
from pathlib import Path

from semgen.checkpoints import save_checkpoint
from semgen.nvlabs_pickle import generator_from_pickle
from semgen.stylegan2_port import generator_from_port

FORMATS = ("auto", "nvlabs", "port")
NETWORKS = {"nvlabs": "G_ema", "port": "g_ema"}  # the network each format's users serve


def detect_format(path: Path) -> str:
    """nvlabs for a plain pickle that names torch_utils.persistence; port otherwise (a torch.save zip, or a file
    the port's loader then names as unreadable)."""
    with path.open("rb") as f:
        if f.read(2) == b"PK":
            return "port"
        f.seek(0)
        try:
            persistent = any(isinstance(arg, str) and arg.startswith("torch_utils.persistence")
                             for _, arg, _ in pickletools.genops(f))
        except Exception:  # not a pickle: the port's loader says what it is
            persistent = False
    return "nvlabs" if persistent else "port"


def import_stylegan2(src: str | Path, out: str | Path, fmt: str = "auto", network: str = "", size: int = 0,
                     style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2, lr_mlp: float = 0.01,
                     replace: bool = False) -> dict:
    """Writes <out>/stylegan/ from `src`; returns what was imported. ValueError (nothing written) for a bad file,
    flags that do not fit it, or an existing generator without `replace`."""
    src, target = Path(src), Path(out) / "stylegan"
    if not src.is_file():
        raise ValueError(f"src: no file at {src}")
    if fmt not in FORMATS:
        raise ValueError(f"format: one of {', '.join(FORMATS)}, got {fmt!r}")
    if target.exists() and not replace:
        raise ValueError(f"out: {target} exists; give --replace to overwrite it")
    fmt = detect_format(src) if fmt == "auto" else fmt
    network = network or NETWORKS[fmt]
    if fmt == "nvlabs":
        model, config = generator_from_pickle(src, network)
        w_avg_from = "w_avg"
    else:
        if size <= 0:
            raise ValueError("size: the port's checkpoints do not record their resolution; give --size (e.g. 256)")
        model, config, w_avg_from = generator_from_port(src, size, style_dim, n_mlp, channel_multiplier, lr_mlp,
                                                        network)
    if config.get("c_dim"):
        raise ValueError(f"{src}: {network} is class-conditional ({config['c_dim']} classes); semgen's requests carry "
                         f"no class label yet, so only unconditional generators are imported")
    source = {"imported_from": str(src), "format": fmt, "network": network, "w_avg_from": w_avg_from}
    # written beside, then moved in place: a failed or killed import leaves the old folder (or none)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stylegan-import-", dir=target.parent))
    try:
        save_checkpoint(staging, model, config, training=source)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"folder": str(target), **source, "img_resolution": config["img_resolution"], "num_ws": model.num_ws,
            "w_dim": config["w_dim"], "parameters": sum(p.numel() for p in model.parameters())}
