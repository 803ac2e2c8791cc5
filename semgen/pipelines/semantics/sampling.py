"""Sampling and segmentation: images (and a predictor's masks) for seeds or given latents.

Forward-only, so split prepare → run → finish (semgen.pipelines.forward) for the batcher:
`prepare` checks a request and makes its w+ rows, `run` is one synthesis (+ predictor) pass over a
batch of rows of one graph key, the Prepared's `finish` turns a request's rows into its Samples.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from semgen.data.loaders import to_uint8
from semgen.pipelines.forward import Op, Prepared, Rows, chunks, concat_rows, split_rows
from semgen.pipelines.semantics.models import Samples, SemanticModels

SYNTHESIS = "synthesis"  # graph keys are "synthesis:<predictor or ''>[:alone-<n>]"
_ALONE = itertools.count()  # keys for requests that must not be batched with others


def sample(models: SemanticModels, seeds=None, latents=None, psi: float = 1.0, predictor: str | None = None,
           batch_size: int = 32) -> Samples:
    """Images (and masks by `predictor`) for seeds or given latents, `batch_size` at a time."""
    prepared = prepare_sample(models, seeds, latents, psi, predictor)
    outputs = [run(models, prepared.key, rows) for rows in split_rows(prepared.rows, chunks(len(prepared), batch_size))]
    return prepared.finish(concat_rows(outputs))


def segment(models: SemanticModels, latents, predictor: str) -> np.ndarray:
    """Masks uint8 [N, S, S] of the images the latents make."""
    return sample(models, latents=latents, predictor=predictor).masks


def prepare(models: SemanticModels, op: Op | str, args: dict) -> Prepared:
    """`op` is sample; `args` are `sample`'s keyword arguments (but batch_size)."""
    if op != Op.SAMPLE:
        raise ValueError(f"op: unknown operation {op!r}; expected sample")
    return prepare_sample(models, **args)


def prepare_sample(models: SemanticModels, seeds=None, latents=None, psi: float = 1.0,
                   predictor: str | None = None) -> Prepared:
    # 1. check inputs
    if (seeds is None) == (latents is None):
        raise ValueError("seeds: give either seeds or latents")
    if seeds is not None and len(seeds) == 0:
        raise ValueError("seeds: empty; give at least one seed")
    if predictor is not None:
        models.predictor_model(predictor)
    # 2. latents, one row per image
    ws = models.latents_from_seeds(seeds, psi) if latents is None else models.check_latents(latents)
    ws = ws.cpu().numpy().astype(np.float32)

    # 3. (the forward pass is `run`) 4. postprocess
    def finish(out: Rows) -> Samples:
        return Samples(images=to_uint8(torch.from_numpy(out["image"])), latents=ws, masks=out.get("mask"))

    key = f"{SYNTHESIS}:{predictor or ''}"
    if models.onnx is not None and models.onnx_graph(predictor) is None:
        # eager torch is not batch-size invariant: such a request never shares a batch
        key += f":alone-{next(_ALONE)}"
    return Prepared(key, {"ws": ws}, finish, nbytes=len(ws) * models.sample_bytes(predictor))


@torch.no_grad()
def run(models: SemanticModels, key: str, rows: Rows) -> Rows:
    """Synthesis (+ the predictor's masks) over a batch of w+ rows; key = "synthesis:<predictor>"."""
    predictor = key.split(":")[1] or None
    graph = models.onnx_graph(predictor)
    if graph is not None:
        out = models.onnx.run(graph, {"ws": rows["ws"]})
        result = {"image": out["image"]}
        if predictor is not None:
            result["mask"] = out["logits"].argmax(1).astype(np.uint8)
        return result
    images, feats = models.synthesize(torch.from_numpy(rows["ws"]).to(models.device))
    result = {"image": images.cpu().numpy()}
    if predictor is not None:
        result["mask"] = models.predict(predictor, images, feats).argmax(1).to(torch.uint8).cpu().numpy()
    return result
