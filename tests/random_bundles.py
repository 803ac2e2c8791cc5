"""Untrained, tiny model bundles with the real layout (see semgen.bundle), for tests that must not
need artifacts/. Same seed, same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.data.scenes import CATEGORIES
from semgen.networks.classifier import Classifier
from semgen.networks.pyramid import PyramidGenerator


def make_random_bundle(path: str | Path, image_size: int = 32, seed: int = 0, **generator_options) -> Path:
    """An untrained, tiny bundle with the real layout: for tests that must not need artifacts/.
    generator_options: PyramidGenerator version-2 options (upsample, noise, padding)."""
    path = Path(path)
    torch.manual_seed(seed)
    classifier = Classifier(image_size=image_size, num_classes=len(CATEGORIES), stage_channels=(4, 8, 8, 8, 8),
                            convs_per_stage=(1, 1, 1, 1, 1), fc_dim=16, class_names=CATEGORIES)
    generator = PyramidGenerator.mirroring(classifier, z_dim=8, embed_dim=8, hidden_dim=16,
                                           gen_channels=(8, 8, 8, 8, 8, 8), class_names=CATEGORIES,
                                           **generator_options)
    if generator_options.get("noise"):  # the noise scales start at 0; make the noise show
        for block in generator.blocks:
            block.noise_scale.data.fill_(0.5)
    save_checkpoint(path / "classifier", classifier.eval(), classifier.config)
    save_checkpoint(path / "pyramid", generator.eval(), generator.config)
    return path


def make_random_semantics_bundle(path: str | Path, image_size: int = 16, seed: int = 0, num_classes: int = 0) -> Path:
    """An untrained, tiny linear-semantics bundle (generator, segmenter, an LSE head named 'lse')
    with the real layout, for tests (num_classes > 0: a class-conditional generator):
        <models>/stylegan/  <models>/segmenter/  <models>/heads/lse/"""
    from semgen.data.scenes import CLASSES
    from semgen.networks.heads import LinearSemanticExtractor
    from semgen.networks.segmenter import UNetSegmenter
    from semgen.networks.stylegan import StyleGenerator

    path = Path(path)
    torch.manual_seed(seed)
    n_res = image_size.bit_length() - 2  # 4 px -> 1 resolution, 16 px -> 3
    generator = StyleGenerator(image_size=image_size, z_dim=8, w_dim=8, mapping_layers=2, channels=(8,) * n_res,
                               num_classes=num_classes)
    if num_classes:  # class embeddings start at 0; make them matter
        generator.class_embed.data.normal_()
    segmenter = UNetSegmenter(num_classes=len(CLASSES), channels=(4, 8), class_names=CLASSES)
    head = LinearSemanticExtractor(generator.layer_channels(), len(CLASSES), CLASSES)
    save_checkpoint(path / "stylegan", generator.eval(), generator.config)
    save_checkpoint(path / "segmenter", segmenter.eval(), segmenter.config)
    save_checkpoint(path / "heads" / "lse", head.eval(), head.config)
    return path


def make_random_higan_bundle(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """An untrained, tiny HiGAN bundle for tests: the semantics bundle plus a classifier, an
    attribute predictor and random boundaries for every score and category transfer (unit
    normals, scale 1, default layers by level: layout early, objects and categories middle, the
    rest late):
        <models>/classifier/  <models>/attributes/  <models>/boundaries/"""
    import numpy as np

    from semgen.data.scenes import ATTRIBUTES
    from semgen.networks.attributes import AttributePredictor
    from semgen.pipelines.higan import TRANSFERS, Boundary, save_boundaries, transfer_name

    path = make_random_semantics_bundle(make_random_bundle(path, image_size, seed), image_size, seed)
    names, levels = tuple(ATTRIBUTES), tuple(ATTRIBUTES.values())
    predictor = AttributePredictor(image_size, names, levels, (0.5,) * len(names), (0.25,) * len(names), channels=(4, 8))
    save_checkpoint(path / "attributes", predictor.eval(), predictor.config)
    generator = load_checkpoint(path / "stylegan")
    num_ws, w_dim = generator.num_ws, generator.w_dim
    rng = np.random.default_rng(seed)
    layers = {"layout": (0, 1), "objects": (2, 3), "category": (2, 3)}
    boundaries = []
    categories = [(c, "category") for c in CATEGORIES] + [(transfer_name(a, b), "category") for a, b in TRANSFERS]
    for name, level in list(zip(names, levels)) + categories:
        normal = rng.standard_normal(w_dim).astype(np.float32)
        boundaries.append(Boundary(name, level, normal / np.linalg.norm(normal), 1.0, 0.5,
                                   layers.get(level, tuple(range(4, num_ws)))))
    save_boundaries(path / "boundaries", boundaries)
    return path
