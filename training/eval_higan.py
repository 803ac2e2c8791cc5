"""`semgen eval higan`: HiGAN on our layer-wise generator, from the shipped predictor and boundaries.

- predictors.<attr>.r2: the attribute predictor on held-out renders;
- boundaries.<name>.val_acc: each SVM on its validation split (from training); .method: how the
  shipped direction was found (svm, or gradient for attribute boundaries trained with it);
- rescoring.<name>.<layer>: eq. 1's Δs for a move of λ = 2 (boundary scales) on one layer of w+, over
  fresh latents, and the hierarchy it shows (Δs-weighted mean layer per abstraction level);
- editing.<attr>.*: strengths −3..3 on the default layers: does the score rise monotonically, how
  much the other attributes move (leakage), and the same with the other boundaries projected out;
  `change`: the score's move from −3 to +3 in the attribute's spread over samples; `pixel_change`: the
  mean absolute pixel change (0..1) from −3 to +3, and `pixel_change_per_spread` that over `change`;
- transfer.<a>_to_<b>.*: moving latents of category a along the a-to-b boundary — how often the
  classifier then says b, and which segmenter classes turn into which (paper §3.3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from semgen.data.loaders import to_uint8
from semgen.data.scenes import CLASSES
from semgen.pipelines.higan import LEVELS, TRANSFERS, Edit, HiganPipeline, transfer_name
from semgen.reports import heatmap_chart, image_grid, label_colors
from training.attributes import predictor_r2

EVAL_SEEDS = 40_000_000  # latents never used to train or choose the boundaries
STRENGTHS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
HIERARCHY = ("layout", "objects", "attribute", "color")  # the paper's order, early to late layers
TRANSFER_STRENGTHS = (1.0, 2.0, 3.0, 4.0)


def eval_higan(models: str = "artifacts", k: int = 100, edit_k: int = 64, n_r2: int = 1000,
               progress: Callable[[str], None] = print, report_dir: str = "reports/higan") -> dict:
    torch.manual_seed(0)
    pipe = HiganPipeline.from_dir(models)
    if not pipe.boundaries:
        raise FileNotFoundError(f"{models}/boundaries: no boundaries; run `semgen train boundaries` first")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {f"predictors.{n}.r2": v for n, v in predictor_r2(pipe.predictor, n_r2).items()}
    result.update({f"boundaries.{n}.val_acc": b.val_acc for n, b in pipe.boundaries.items()})
    result.update({f"boundaries.{n}.default_layers": list(b.default_layers) for n, b in pipe.boundaries.items()})
    result.update({f"boundaries.{n}.method": b.method for n, b in pipe.boundaries.items()})
    result.update(_rescoring(pipe, k, out, progress))
    result.update(_editing(pipe, edit_k, out, progress))
    result.update(_transfer(pipe, out, progress))
    (out / "higan.json").write_text(json.dumps(result, indent=2))
    return result


def _rescoring(pipe: HiganPipeline, k: int, out: Path, progress) -> dict:
    ws = pipe.gan.latents_from_seeds(EVAL_SEEDS + np.arange(k))
    layers = [(i,) for i in range(pipe.num_ws)]
    base = pipe.render(ws)[1]
    result, names, rows = {}, [], []
    for name in _ordered(pipe):
        deltas = pipe.rescore(name, ws, layers, base_scores=base)
        result.update({f"rescoring.{name}.{i}": round(float(d), 5) for i, d in enumerate(deltas)})
        names.append(name)
        rows.append(deltas / max(deltas.max(), 1e-12))
        progress(f"re-scoring {name}: peak at layer {int(deltas.argmax())}")
    matrix = np.array(rows)
    heatmap_chart(out / "rescoring.png", matrix, [f"{n} ({_level(pipe, n)[:4]})" for n in names],
                  [str(i) for i in range(pipe.num_ws)], x_label="layer")
    centres = {}
    for level in HIERARCHY + ("category",):
        sel = [i for i, n in enumerate(names) if _level(pipe, n) == level]
        if sel:
            weights = matrix[sel]
            centres[level] = float(((weights * np.arange(pipe.num_ws)).sum(1) / weights.sum(1)).mean())
            result[f"hierarchy.{level}.centre_layer"] = round(centres[level], 3)
    present = [lv for lv in HIERARCHY if lv in centres]
    order = sorted(present, key=centres.get)
    result["hierarchy.order"] = " < ".join(order)
    result["hierarchy.matches_paper"] = order == present
    return result


def _editing(pipe: HiganPipeline, k: int, out: Path, progress) -> dict:
    ws = pipe.gan.latents_from_seeds(EVAL_SEEDS + 10_000 + np.arange(k))
    attrs = [n for n in _ordered(pipe) if _level(pipe, n) != "category"]
    cols = [pipe.score_names.index(a) for a in attrs]
    unedited = pipe.render(ws)  # strength 0 of every sweep
    spread = unedited[1][:, cols].std(0) + 1e-8  # each attribute's natural spread over samples
    result, table, pictures = {}, [], []
    for a in attrs:
        for conditional in (False, True):
            others = tuple(o for o in attrs if o != a) if conditional else ()
            means, ends = [], []
            for s in STRENGTHS:
                moved = None if s == 0 else pipe.edit_latents(ws, [Edit(a, s)], condition_on=others)
                images, scores = unedited if moved is None else pipe.render(moved)
                means.append(scores[:, cols].mean(0))
                if not conditional:
                    pictures.append(to_uint8(images[:2]))
                    if s in (STRENGTHS[0], STRENGTHS[-1]):
                        ends.append(images)
            means = np.array(means)  # [strengths, attrs]
            change = (means[-1] - means[0]) / spread  # −3 → +3, in each attribute's spread
            i = attrs.index(a)
            leak = float(np.delete(np.abs(change), i).mean() / max(abs(change[i]), 1e-8))
            suffix = "_conditional" if conditional else ""
            result[f"editing.{a}.monotonic{suffix}"] = bool(np.all(np.diff(means[:, i]) > 0))
            result[f"editing.{a}.leakage{suffix}"] = round(leak, 4)
            if not conditional:
                result[f"editing.{a}.change"] = round(float(change[i]), 4)
                pixels = float((ends[1] - ends[0]).abs().mean()) / 2  # images in [-1, 1]
                result[f"editing.{a}.pixel_change"] = round(pixels, 4)
                result[f"editing.{a}.pixel_change_per_spread"] = round(pixels / max(abs(float(change[i])), 1e-8), 4)
                table.append(np.abs(change) / max(abs(change[i]), 1e-8))
        progress(f"editing {a}: monotonic {result[f'editing.{a}.monotonic']}, leakage {result[f'editing.{a}.leakage']} "
                 f"(conditional {result[f'editing.{a}.leakage_conditional']})")
    heatmap_chart(out / "disentanglement.png", np.array(table), [f"edit {a}" for a in attrs], [a[:5] for a in attrs])
    result["editing.table"] = {a: {b: round(float(v), 3) for b, v in zip(attrs, row)} for a, row in zip(attrs, table)}
    # editing.png: per attribute, two samples across the strengths
    rows, labels = [], []
    for j, a in enumerate(attrs):
        block = pictures[j * len(STRENGTHS):(j + 1) * len(STRENGTHS)]
        for sample in range(2):
            rows.append([p[sample] for p in block])
            labels.append(f"{a} {sample}")
    image_grid(rows, labels=labels).save(out / "editing.png")
    _layer_picture(pipe, ws[:3], attrs, out / "layers.png")
    _joint_picture(pipe, ws[:4], out / "joint.png")
    return result


def _layer_picture(pipe: HiganPipeline, ws, attrs, path: Path) -> None:
    """Figure 3c: each attribute moved (+3) on early, middle, late and last layers alone."""
    groups = np.array_split(np.arange(pipe.num_ws), 4)
    rows, labels = [], []
    base = to_uint8(pipe.render(ws)[0])
    for a in attrs:
        cells = [to_uint8(pipe.render(pipe.edit_latents(ws, [Edit(a, 3.0, tuple(int(l) for l in g))]))[0]) for g in groups]
        rows.append([base[0], *[c[0] for c in cells]])
        labels.append(a)
    image_grid(rows, labels=labels).save(path)


def _joint_picture(pipe: HiganPipeline, ws, path: Path) -> None:
    """One edit per level, each on its own default layers, then all of them together."""
    picks = [n for n in ("horizon", "tree_count", "time_of_day", "warmth") if n in pipe.boundaries]
    edits = [Edit(n, 2.5) for n in picks]
    rows = [[to_uint8(pipe.render(ws)[0])[i]] for i in range(len(ws))]
    for e in edits + [None]:
        moved = pipe.edit_latents(ws, edits if e is None else [e])
        for i, image in enumerate(to_uint8(pipe.render(moved)[0])):
            rows[i].append(image)
    image_grid(rows, labels=[f"sample {i}" for i in range(len(ws))]).save(path)


def _transfer(pipe: HiganPipeline, out: Path, progress, pool: int = 600, per_pair: int = 24) -> dict:
    """Category transfer along each `<a>_to_<b>` boundary on its default layers: the share of
    category-a samples the classifier then puts in b, per strength, and at the best strength which
    segmenter classes turned into which."""
    if pipe.gan.segmenter is None:
        return {}
    n_attrs = len(pipe.predictor.attribute_names)
    categories = pipe.score_names[n_attrs:]
    ws = pipe.gan.latents_from_seeds(EVAL_SEEDS + 20_000 + np.arange(pool))
    predicted = pipe.render(ws)[1][:, n_attrs:].argmax(1)
    result, rows, labels = {}, [], []
    for src, dst in TRANSFERS:
        name = transfer_name(src, dst)
        chosen = ws[torch.from_numpy(predicted == categories.index(src))][:per_pair] if name in pipe.boundaries else []
        if len(chosen) == 0:
            continue
        success = {}
        for s in TRANSFER_STRENGTHS:
            scores = pipe.render(pipe.edit_latents(chosen, [Edit(name, s)]))[1]
            success[s] = round(float((scores[:, n_attrs:].argmax(1) == categories.index(dst)).mean()), 4)
        best = max(success, key=success.get)
        moved = pipe.edit_latents(chosen, [Edit(name, best)])
        before = pipe.gan.segment(chosen.cpu().numpy(), "segmenter")
        after = pipe.gan.segment(moved.cpu().numpy(), "segmenter")
        mapping = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
        np.add.at(mapping, (before.ravel(), after.ravel()), 1)
        key = f"transfer.{name}"
        result.update({f"{key}.samples": len(chosen), f"{key}.success": success[best], f"{key}.strength": best,
                       f"{key}.success_by_strength": {str(s): v for s, v in success.items()},
                       f"{key}.mapping": _top_mappings(mapping)})
        progress(f"transfer {src} -> {dst}: {success[best]:.2f} now classified {dst} at strength {best}; "
                 f"{result[f'{key}.mapping']}")
        sweep = [to_uint8(pipe.render(pipe.edit_latents(chosen[:2], [Edit(name, s * best / 2)]))[0]) for s in (0, 1, 2)]
        for i in range(min(2, len(chosen))):
            rows.append([*(s[i] for s in sweep), label_colors(before[i:i + 1])[0], label_colors(after[i:i + 1])[0]])
            labels.append(f"{src}>{dst}")
    if rows:
        image_grid(rows, labels=labels).save(out / "transfer.png")
    return result


def _top_mappings(mapping: np.ndarray, n: int = 4) -> dict[str, float]:
    """The largest off-diagonal flows 'a->b' as shares of class a's pixels before the move."""
    share = mapping / np.maximum(mapping.sum(1, keepdims=True), 1)
    off = [(share[a, b], a, b) for a in range(len(CLASSES)) for b in range(len(CLASSES))
           if a != b and mapping[a].sum() >= 200]
    return {f"{CLASSES[a]}->{CLASSES[b]}": round(float(v), 3) for v, a, b in sorted(off, reverse=True)[:n]}


def _level(pipe: HiganPipeline, name: str) -> str:
    return pipe.boundaries[name].level


def _ordered(pipe: HiganPipeline) -> list[str]:
    """Boundaries in the hierarchy's order (layout, objects, attribute, color, category)."""
    return sorted(pipe.boundaries, key=lambda n: LEVELS.index(_level(pipe, n)) if _level(pipe, n) in LEVELS else len(LEVELS))
