"""`semgen train average`: the equal-weight average of checkpoints of one network.

Two checkpoints of one run (say steps 600 and 1,200 of a fine-tune) lie close enough in weight space that
their average is a working network (checkpoint averaging, Izmailov et al. 2018; "model soups",
Wortsman et al. 2022). It smooths over the step-to-step swings of a GAN's measures, which a single
checkpoint lands on at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from semgen.checkpoints import load_checkpoint, read_config, save_checkpoint
from semgen.options import opt


@dataclass
class AverageOptions:
    checkpoints: tuple[str, ...] = opt(help="two or more checkpoint folders of one network (same class and config), "
                                            "comma-separated")
    out: str = opt(help="the averaged checkpoint's folder")


def average_checkpoints(opt: AverageOptions) -> Path:
    if len(opt.checkpoints) < 2:
        raise ValueError(f"checkpoints: give two or more, got {len(opt.checkpoints)}")
    metas = [read_config(path) for path in opt.checkpoints]
    for path, meta in zip(opt.checkpoints[1:], metas[1:]):
        if (meta["class"], meta["config"]) != (metas[0]["class"], metas[0]["config"]):
            raise ValueError(f"checkpoints: {path} is not the same network as {opt.checkpoints[0]} "
                             "(class or config differ)")
    modules = [load_checkpoint(path) for path in opt.checkpoints]
    module, states = modules[0], [m.state_dict() for m in modules]
    # floating tensors (weights, batch-norm statistics) are averaged; counters are the first's
    module.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                            for k, v in states[0].items()})
    save_checkpoint(opt.out, module, module.config, step=max(meta.get("step", 0) for meta in metas),
                    training={"average_of": list(opt.checkpoints)})
    return Path(opt.out)
