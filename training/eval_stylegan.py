"""`semgen eval stylegan`: realism of the layer-wise generator as fd_fc7 (see training/fd.py)
against held-out real scenes, next to an untrained generator of the same shape and the floor
(real against other real scenes); a picture of samples at two truncations.

class_shares: the share of samples the classifier puts in each category, next to real scenes'.
fd_fc7_class_mix is the fd_fc7 that the class mix alone costs: real scenes drawn in the samples'
class proportions against real scenes. A generator that drops a class pays there, however good
its other images are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_checkpoint, load_classifier
from semgen.data.loaders import to_uint8
from semgen.data.scenes import HELDOUT_SEED_OFFSET, render_batch
from semgen.networks.stylegan import StyleGenerator
from semgen.reports import image_grid
from training.fd import classifier_outputs, frechet_distance

REAL_SEEDS = HELDOUT_SEED_OFFSET + 700_000
FLOOR_SEEDS = HELDOUT_SEED_OFFSET + 800_000


@torch.no_grad()
def generate(G, n: int, seed: int, psi: float = 1.0, batch_size: int = 100) -> np.ndarray:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return np.concatenate([to_uint8(G(c, psi=psi)) for c in z.split(batch_size)])


def eval_stylegan(models: str = "artifacts", n: int = 1000, report_dir: str = "reports/stylegan") -> dict:
    G = load_checkpoint(Path(models) / "stylegan")
    classifier = load_classifier(Path(models) / "classifier")
    real = render_batch(REAL_SEEDS + np.arange(n), G.image_size)[0]
    floor = render_batch(FLOOR_SEEDS + np.arange(n), G.image_size)[0]
    real_out = classifier_outputs(classifier, real)
    real_fc7, real_classes = real_out["fc7"], real_out["fc8"].argmax(1)

    def fd(fc7) -> float:
        return round(frechet_distance(fc7, real_fc7), 3)

    def fc7_of(images):
        return classifier_outputs(classifier, images)["fc7"]

    def shares(classes) -> np.ndarray:
        return np.bincount(classes, minlength=classifier.num_classes) / len(classes)

    names = classifier.class_names or tuple(str(c) for c in range(classifier.num_classes))
    torch.manual_seed(0)
    untrained = StyleGenerator(**G.config).eval()
    samples = generate(G, n, seed=1)
    sample_out = classifier_outputs(classifier, samples)
    sample_shares = shares(sample_out["fc8"].argmax(1))
    result = {
        "fd_fc7": fd(sample_out["fc7"]),
        "fd_fc7_psi0.7": fd(fc7_of(generate(G, n, seed=1, psi=0.7))),
        "fd_fc7_untrained": fd(fc7_of(generate(untrained, n, seed=1))),
        "fd_fc7_real": fd(fc7_of(floor)),
        "fd_fc7_class_mix": round(_class_mix_fd(real_fc7, real_classes, sample_shares), 3),
        "class_shares": dict(zip(names, np.round(sample_shares, 4).tolist())),
        "class_shares_real": dict(zip(names, np.round(shares(real_classes), 4).tolist())),
        "n": n,
        "step": json.loads((Path(models) / "stylegan" / "config.json").read_text())["step"],
    }
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stylegan.json").write_text(json.dumps(result, indent=2))
    truncated = generate(G, 8, seed=1, psi=0.7)
    image_grid([list(real[:8]), list(samples[:8]), list(samples[8:16]), list(truncated)],
               labels=["real", "samples", "samples", "psi 0.7"]).save(out / "samples.png")
    return result


def _class_mix_fd(real_fc7, predicted, target_shares) -> float:
    """fd_fc7 of real scenes redrawn (with replacement, seeded) in target_shares of the classes the
    classifier predicts for them."""
    rng = np.random.default_rng(0)
    picks = [rng.choice(np.flatnonzero(predicted == c), int(round(share * len(real_fc7))))
             for c, share in enumerate(target_shares) if share > 0 and (predicted == c).any()]
    return frechet_distance(real_fc7[np.concatenate(picks)], real_fc7)
