"""`semgen import direction NAME FILE.npy --models DIR [--layers 6,7,8]`: a direction in the generator's w space found
by another tool (the `.npy` boundaries InterFaceGAN- and HiGAN-style tools write: shape (1, w_dim) or (w_dim,)) as a
boundary of the bundle, which Manipulate then edits along.

The direction is stored at unit length. Its scale, what strength 1 means, is the spread (std) of the generator's own
w along it over SCALE_SAMPLES seeded latents, as for the boundaries `semgen train boundaries` fits, so strengths mean
the same on every direction. Imported directions have no validation accuracy (0) and level "imported".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


from semgen.pipelines.semantics.headstore import HEAD_NAME as NAME  # one rule for the names clients send

SCALE_SAMPLES = 2000
LEVEL = "imported"


def read_direction(path: Path, w_dim: int) -> np.ndarray:
    """The unit direction [w_dim] from a .npy of shape (1, w_dim) or (w_dim,); ValueError naming the file."""
    try:
        normal = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a .npy array ({e})") from None
    if normal.ndim == 2 and normal.shape[0] == 1:
        normal = normal[0]
    if normal.ndim != 1 or normal.shape[0] != w_dim or not np.issubdtype(normal.dtype, np.number):
        raise ValueError(f"{path}: expected numbers of shape (1, {w_dim}) or ({w_dim},) for this generator's w, "
                         f"got {normal.dtype} {normal.shape}")
    normal = normal.astype(np.float64)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"{path}: the direction must be finite and non-zero (its length is {norm:g})")
    return (normal / norm).astype(np.float32)


def parse_layers(layers: str, num_ws: int) -> tuple[int, ...]:
    """"6,7,8" or "6-8" (or a mix) -> (6, 7, 8); "" -> every layer."""
    if not layers:
        return tuple(range(num_ws))
    chosen: list[int] = []
    for part in layers.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--layers: {part!r} is not a layer or a range like 6-8")
        chosen += range(int(lo), int(hi or lo) + 1)
    bad = sorted({i for i in chosen if i >= num_ws})
    if bad or len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"--layers: {layers!r} must name distinct layers in 0..{num_ws - 1}"
                         + (f" ({bad} are not)" if bad else ""))
    return tuple(chosen)


def import_direction(models: str | Path, name: str, npy: str | Path, layers: str = "", replace: bool = False) -> dict:
    """Add the direction to <models>/boundaries/ (made when absent); nothing is written on a failure."""
    import torch

    from semgen.checkpoints import load_checkpoint
    from semgen.pipelines.higan import Boundary, load_boundaries, save_boundaries
    from semgen.pipelines.semantics import SemanticsPipeline

    # 1. check the name, the bundle and the file
    models = Path(models)
    if not NAME.fullmatch(name):
        raise ValueError(f"name: {name!r} must be 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    if not (models / "stylegan").exists():
        raise ValueError(f"--models: {models} has no stylegan/ (import a generator first: `semgen import stylegan2`)")
    folder = models / "boundaries"
    existing = load_boundaries(folder) if (folder / "boundaries.json").exists() else {}
    if name in existing and not replace:
        raise ValueError(f"name: {models} already has a direction {name!r}; pass --replace to overwrite it")
    gan = SemanticsPipeline(load_checkpoint(models / "stylegan"))
    num_ws, w_dim = gan.latent_shape
    normal = read_direction(Path(npy), w_dim)
    chosen = parse_layers(layers, num_ws)
    # 2. its scale over the generator's own latents
    with torch.no_grad():
        w = gan.latents_from_seeds(range(SCALE_SAMPLES))[:, 0].double().numpy()
    scale = float((w @ normal.astype(np.float64)).std())
    # 3. write beside the others, in their order
    training = json.loads((folder / "boundaries.json").read_text()).get("training", {}) if existing else {}
    existing[name] = Boundary(name, LEVEL, normal, scale, 0.0, chosen, method="imported")
    save_boundaries(folder, list(existing.values()), training)
    return {"name": name, "models": str(models), "w_dim": w_dim, "layers": list(chosen), "scale": round(scale, 6),
            "directions": len(existing)}
