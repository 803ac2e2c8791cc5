"""`semgen eval imagine` and `semgen bench imagine`: IMAGINE against its own stage 1 and a
DeepInversion-style baseline (the paper's table 1), the controls as pictures, and the speed and
quality-vs-iterations curve that chose the default schedule.

Metrics, for K variations of each held-out reference scene:
- fd_fc7: Fréchet distance of all variations' fc7 features to real scenes (training/fd.py);
- class_agreement: share of variations the classifier puts in the reference's true category;
- diversity: mean perceptual distance between variations of the same reference;
- distance_to_reference: mean perceptual distance from each variation to its reference.
The perceptual distance stands in for LPIPS (no pretrained weights here): unit-normalised channel
vectors of the classifier's shallow layers, squared difference, spatial mean, layers averaged.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, replace
from itertools import combinations
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from semgen.data.loaders import to_tensor
from semgen.data.scenes import CATEGORIES, HELDOUT_SEED_OFFSET, render_batch, render_scene
from semgen.pipelines.imagine import Controls, ImaginePipeline, Position, Schedule, attribution_map, blob_centre
from semgen.reports import image_grid, line_chart
from training.fd import classifier_outputs, frechet_distance

REFERENCE_SEEDS = HELDOUT_SEED_OFFSET + 900_000
REAL_SEEDS = HELDOUT_SEED_OFFSET + 700_000
FLOOR_SEEDS = HELDOUT_SEED_OFFSET + 800_000
CORNERS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))


def methods(schedule: Schedule) -> dict[str, Schedule]:
    """IMAGINE, its stage 1 alone and DeepInversion, each with the same number of iterations.
    DeepInversion matches the classifier's batch-norm statistics (eq. 3) instead of the reference's,
    weighted 0.05 (DeepInversion's feature-regulariser scale; at 5 the class is lost)."""
    matching_only = replace(schedule, stage1=schedule.total, stage2=0)
    return {"imagine": schedule, "stage1": matching_only,
            "deepinversion": replace(matching_only, dm=0.0, bn=0.05)}


def references(n: int, size: int) -> list:
    """n held-out scenes, categories in turn."""
    return [render_scene(REFERENCE_SEEDS + i, size, category=i % len(CATEGORIES)) for i in range(n)]


@torch.no_grad()
def perceptual_distance(pipe: ImaginePipeline, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] pairs -> [N] distances (see the module docstring)."""
    fa, fb = pipe.classifier.features(to_tensor(a)), pipe.classifier.features(to_tensor(b))
    total = 0.0
    for layer in pipe.shallow_layers:
        na = fa[layer] / (fa[layer].norm(dim=1, keepdim=True) + 1e-8)
        nb = fb[layer] / (fb[layer].norm(dim=1, keepdim=True) + 1e-8)
        total = total + (na - nb).pow(2).sum(1).mean((1, 2))
    return (total / len(pipe.shallow_layers)).numpy()


class _Judge:
    """fd_fc7 against a fixed set of real scenes."""

    def __init__(self, pipe: ImaginePipeline, n_real: int):
        self.pipe = pipe
        self.real_fc7 = classifier_outputs(pipe.classifier, render_batch(REAL_SEEDS + np.arange(n_real), pipe.image_size)[0])["fc7"]

    def fd(self, images: np.ndarray) -> float:
        return round(frechet_distance(classifier_outputs(self.pipe.classifier, images)["fc7"], self.real_fc7), 3)


def imagine_set(pipe: ImaginePipeline, scenes, variations: int, schedule: Schedule, progress, label: str) -> np.ndarray:
    """Variations of every reference -> uint8 [n, K, S, S, 3]; reference i uses seed 1000·i."""
    out = []
    for i, scene in enumerate(scenes):
        out.append(pipe.run(scene.image, variations, seed=1000 * i, schedule=schedule).images)
        progress(f"{label}: reference {i + 1}/{len(scenes)}")
    return np.stack(out)


def set_metrics(pipe: ImaginePipeline, judge: _Judge, scenes, images: np.ndarray) -> dict:
    n, k = images.shape[:2]
    flat = images.reshape(n * k, *images.shape[2:])
    with torch.no_grad():
        predicted = pipe.classifier(to_tensor(flat)).argmax(1).numpy().reshape(n, k)
    truth = np.array([s.category for s in scenes])[:, None]
    refs = np.repeat(np.stack([s.image for s in scenes]), k, axis=0)
    pairs = list(combinations(range(k), 2))
    diversity = [perceptual_distance(pipe, images[:, a], images[:, b]).mean() for a, b in pairs]
    return {
        "fd_fc7": judge.fd(flat),
        "class_agreement": round(float((predicted == truth).mean()), 4),
        "diversity": round(float(np.mean(diversity)), 4),
        "distance_to_reference": round(float(perceptual_distance(pipe, flat, refs).mean()), 4),
    }


def eval_imagine(models: str = "artifacts", n: int = 20, variations: int = 4, n_real: int = 1000,
                 schedule: Schedule | None = None, progress: Callable[[str], None] = print,
                 report_dir: str = "reports/imagine") -> dict:
    torch.manual_seed(0)
    pipe = ImaginePipeline.from_dir(models)
    schedule = schedule or Schedule()
    scenes = references(n, pipe.image_size)
    judge = _Judge(pipe, n_real)
    floor = render_batch(FLOOR_SEEDS + np.arange(n * variations), pipe.image_size)[0]
    result = {"n": n, "variations": variations, "schedule": asdict(schedule), "real.fd_fc7": judge.fd(floor)}
    sets = {}
    for name, sch in methods(schedule).items():
        t0 = time.perf_counter()
        sets[name] = imagine_set(pipe, scenes, variations, sch, progress, name)
        seconds = (time.perf_counter() - t0) / (n * variations)
        for key, value in set_metrics(pipe, judge, scenes, sets[name]).items():
            result[f"{name}.{key}"] = value
        result[f"{name}.seconds_per_variation"] = round(seconds, 3)
        progress(json.dumps({k: v for k, v in result.items() if k.startswith(name)}))
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    _variations_picture(scenes, sets, out / "variations.png")
    result.update(_controls(pipe, scenes, sets["imagine"], schedule, progress, out))
    (out / "imagine.json").write_text(json.dumps(result, indent=2))
    return result


def _variations_picture(scenes, sets: dict, path: Path) -> None:
    rows, labels = [], []
    for i in range(0, min(len(scenes), 16), 2):
        for name, images in sets.items():
            rows.append([scenes[i].image, *images[i]])
            labels.append(f"{name} {i}")
    image_grid(rows, labels=labels).save(path)


def _controls(pipe: ImaginePipeline, scenes, imagine_images: np.ndarray, schedule: Schedule, progress, out: Path) -> dict:
    """Position control at four blob positions (pictures + how far Grad-CAM's centre lands from
    the blob, against uncontrolled variations), and shape, style and counterfactual pictures."""
    def run(reference, k, seed, controls):
        sch = replace(pipe.default_schedule(controls), stage1=schedule.stage1, stage2=schedule.stage2)
        return pipe.run(reference, k, seed=seed, controls=controls, schedule=sch).images

    result, rows, errors, free_errors = {}, [], [], []
    scenes = [scenes[i % len(scenes)] for i in range(8)]  # the examples below, for any n
    imagine_images = [imagine_images[i % len(imagine_images)] for i in range(8)]
    for i in (0, 3):
        scene, row = scenes[i], [scenes[i].image]
        target = pipe.classifier(to_tensor(scene.image[None])).argmax(1).item()
        for x, y in CORNERS:
            image = run(scene.image, 1, 7, Controls(position=Position(x, y)))
            row.append(image[0])
            cx, cy = blob_centre(attribution_map(pipe, image, target)[0])
            errors.append(np.hypot(cx - x, cy - y))
            for free in imagine_images[i]:
                fx, fy = blob_centre(attribution_map(pipe, free[None], target)[0])
                free_errors.append(np.hypot(fx - x, fy - y))
        rows.append(row)
        progress(f"position control: reference {i}")
    image_grid(rows, labels=["ref " + str(i) for i in (0, 3)]).save(out / "position.png")
    result["position.error"] = round(float(np.mean(errors)), 4)
    result["position.error_uncontrolled"] = round(float(np.mean(free_errors)), 4)

    shape = render_scene(REFERENCE_SEEDS + 101, pipe.image_size, category=scenes[1].category + 1, rendition="line_drawing").image
    shaped = run(scenes[1].image, 3, 8, Controls(shape_image=shape))
    content = scenes[2].image
    styled = run(scenes[5].image, 3, 9, Controls(style_content=content))
    query, ref = scenes[4].image, scenes[6].image
    half = np.zeros(query.shape[:2], bool)
    half[query.shape[0] // 2:] = True  # the ground
    counter = run(ref, 2, 10, Controls(counterfactual_query=query, query_region=half, reference_region=half))
    image_grid([[scenes[1].image, shape, *shaped], [scenes[5].image, content, *styled], [ref, query, *counter]],
               labels=["shape", "style", "counterfact."]).save(out / "controls.png")
    progress("shape, style and counterfactual pictures written")
    return result


def bench_imagine(models: str = "artifacts", n: int = 12, variations: int = 4, totals=(50, 100, 200, 400),
                  repeats: int = 3, n_real: int = 1000, schedule: Schedule | None = None,
                  progress: Callable[[str], None] = print, report_dir: str = "reports/imagine") -> dict:
    """Seconds per variation for the default schedule (median of `repeats` runs of K variations)
    and fd_fc7 of IMAGINE at several iteration counts (split between the stages as the schedule is)."""
    torch.manual_seed(0)
    pipe = ImaginePipeline.from_dir(models)
    schedule = schedule or Schedule()
    scenes = references(n, pipe.image_size)
    pipe.run(scenes[0].image, 1, seed=0, schedule=Schedule(stage1=2, stage2=2))  # warm-up (first Adam import)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe.run(scenes[r].image, variations, seed=r, schedule=schedule)
        times.append((time.perf_counter() - t0) / variations)
    result = {"seconds_per_variation": round(statistics.median(times), 3), "variations": variations,
              "image_size": pipe.image_size, "schedule": asdict(schedule), "threads": torch.get_num_threads()}
    progress(f"seconds per variation: {result['seconds_per_variation']}")
    judge = _Judge(pipe, n_real)
    for total in totals:
        stage1 = total * schedule.stage1 // max(schedule.total, 1)
        sch = replace(schedule, stage1=stage1, stage2=total - stage1)
        images = imagine_set(pipe, scenes, variations, sch, progress, f"{total} iterations")
        result[f"fd_fc7.{total}"] = judge.fd(images.reshape(-1, *images.shape[2:]))
        progress(f"fd_fc7 at {total} iterations: {result[f'fd_fc7.{total}']}")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    xlabel = f"iterations (stage 1 : stage 2 = {schedule.stage1} : {schedule.stage2})"
    line_chart(out / "curve.png", list(totals), {"fd_fc7": [result[f"fd_fc7.{t}"] for t in totals]},
               x_label=xlabel, y_label="fd_fc7 (lower is better)", annotate=True)
    return result
