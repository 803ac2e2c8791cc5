"""`semgen scenes|bench|train|eval ...`: the training layer's commands. Each is one options dataclass
(flags from semgen.options) and one function; the options are written as JSON beside the outputs
(training runs: <run_dir>/training_options.json; evals and benches: <report_dir>/<name>_options.json)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from semgen.options import command, opt, print_result, subcommands, write_options
from training.attributes import AttributeOptions, train_attributes
from training.average import AverageOptions, average_checkpoints
from training.boundaries import BoundaryOptions, train_boundaries
from training.classifier import ClassifierOptions, train_classifier
from training.heads import HeadsOptions, train_heads
from training.pyramid import PyramidOptions, train_pyramid
from training.segmenter import SegmenterOptions, train_segmenter
from training.stylegan import StyleGANOptions, train_stylegan


def _json():
    return opt(False, "print the result as one JSON line (progress goes to stderr)")


def _models():
    return opt("artifacts", "the model bundle")


def _report_dir(default: str):
    return opt(default, "where the report (JSON, pictures and these options) goes")


def _log(as_json: bool):
    """Progress lines: on stderr when stdout carries JSON."""
    return (lambda msg: print(msg, file=sys.stderr)) if as_json else print


def _report(o, result: dict, name: str) -> int:
    write_options(o, o.report_dir, f"{name}_options")
    print_result(result, o.json)
    return 0


# ---- scenes, bench ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class BenchScenes:
    n: int = opt(1000, "scenes per run")
    size: int = opt(64, "pixels")
    repeats: int = opt(3, "runs (the median counts)")
    report_dir: str = _report_dir("reports/bench")
    json: bool = _json()


def bench_scenes(o: BenchScenes) -> int:
    from training.bench import bench_scenes as bench

    return _report(o, bench(n=o.n, size=o.size, repeats=o.repeats, report_dir=o.report_dir), "scenes")


@dataclass(frozen=True, kw_only=True)
class BenchStyleGAN:
    configs: tuple[str, ...] = opt(("128,128,64,32,16/16,32,64,128,128", "128,128,128,64,32/32,64,128,128,128",
                                    "256,256,128,64,64/64,64,128,256,256"),
                                   "G channels/D channels, one pair per value (4 px up / image size down)",
                                   nargs="+", parse=str)
    batch_sizes: tuple[int, ...] = opt((16, 32), "images per step")
    steps: int = opt(4, "timed steps per configuration (the median counts; one warm-up step before)")
    threads: int = opt(2, "torch threads")
    device: str = opt("cpu", "cpu, cuda or cuda:N (a GPU's report is stylegan_step_cuda.json)")
    report_dir: str = _report_dir("reports/bench")
    json: bool = _json()


def bench_stylegan(o: BenchStyleGAN) -> int:
    from training.bench import bench_stylegan as bench

    configs = [tuple(c.split("/")) for c in o.configs]
    result = bench(configs, o.batch_sizes, o.steps, o.threads, o.report_dir, progress=_log(o.json), device=o.device)
    return _report(o, result, "stylegan_step" if result["device"] == "cpu" else "stylegan_step_cuda")


@dataclass(frozen=True, kw_only=True)
class BenchImagine:
    models: str = _models()
    n: int = opt(12, "held-out references for the quality curve")
    variations: int = opt(4, "variations per reference")
    totals: tuple[int, ...] = opt((50, 100, 200, 400), "iteration counts (split between the stages as the "
                                                       "default schedule is)")
    repeats: int = opt(3, "timed runs (the median counts)")
    report_dir: str = _report_dir("reports/imagine")
    json: bool = _json()


def bench_imagine(o: BenchImagine) -> int:
    from training.eval_imagine import bench_imagine as bench

    return _report(o, bench(o.models, n=o.n, variations=o.variations, totals=o.totals, repeats=o.repeats,
                            progress=_log(o.json), report_dir=o.report_dir), "bench")


# ---- train -----------------------------------------------------------------------------------

def _trained(train):
    """A train command: the loop writes <run_dir>/training_options.json itself; print what it made."""
    def run(o) -> int:
        made = train(o)
        for path in made if isinstance(made, list) else [made]:  # heads: one checkpoint per kind
            print(f"{'boundaries' if train is train_boundaries else 'checkpoint'}: {path}")
        return 0
    return run


TRAIN = {  # command -> (options, loop, help)
    "classifier": (ClassifierOptions, train_classifier, "the feature extractor (pyramid levels, IMAGINE, fd_fc7)"),
    "pyramid": (PyramidOptions, train_pyramid, "the semantic-pyramid generator"),
    "stylegan": (StyleGANOptions, train_stylegan, "the layer-wise latent generator (linear semantics, HiGAN)"),
    "segmenter": (SegmenterOptions, train_segmenter, "the supervisor segmenter (labels generated images)"),
    "heads": (HeadsOptions, train_heads, "semantic heads (LSE, NSE-1, NSE-2) on generated samples, full or few-shot"),
    "attributes": (AttributeOptions, train_attributes, "the attribute predictor HiGAN scores images with"),
    "boundaries": (BoundaryOptions, train_boundaries, "HiGAN boundaries: score sampled latents, one linear SVM per "
                                                      "score"),
    "average": (AverageOptions, average_checkpoints, "the equal-weight average of checkpoints of one network "
                                                     "(e.g. two steps of one run)"),
}


# ---- eval ------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EvalClassifier:
    checkpoint: str = opt("artifacts/classifier", "the classifier checkpoint")
    n: int = opt(2000, "held-out scenes")
    report_dir: str = _report_dir("reports/classifier")
    json: bool = _json()


def eval_classifier(o: EvalClassifier) -> int:
    from training.evaluate import eval_classifier as evaluate

    return _report(o, evaluate(o.checkpoint, n=o.n, report_dir=o.report_dir), "classifier")


@dataclass(frozen=True, kw_only=True)
class EvalSegmenter:
    checkpoint: str = opt("artifacts/segmenter", "the segmenter checkpoint")
    n: int = opt(1000, "held-out renders")
    report_dir: str = _report_dir("reports/segmenter")
    json: bool = _json()


def eval_segmenter(o: EvalSegmenter) -> int:
    from training.segmenter import eval_segmenter as evaluate

    return _report(o, evaluate(o.checkpoint, n=o.n, report_dir=o.report_dir), "segmenter")


@dataclass(frozen=True, kw_only=True)
class EvalHeads:
    models: str = _models()
    n: int = opt(1000, "fresh evaluation samples")
    repeats: int = opt(5, "few-shot repeats with different samples")
    shots: tuple[int, ...] = opt((1, 4, 8, 16), "few-shot sizes")
    n_centers: int = opt(500, "samples for the class centres")
    report_dir: str = _report_dir("reports/heads")
    json: bool = _json()


def eval_heads(o: EvalHeads) -> int:
    from training.eval_heads import eval_heads as evaluate

    return _report(o, evaluate(o.models, n=o.n, repeats=o.repeats, shots=o.shots, n_centers=o.n_centers,
                               report_dir=o.report_dir, progress=_log(o.json)), "heads")


@dataclass(frozen=True, kw_only=True)
class EvalStyleGAN:
    models: str = _models()
    n: int = opt(1000, "generated and real images")
    report_dir: str = _report_dir("reports/stylegan")
    json: bool = _json()


def eval_stylegan(o: EvalStyleGAN) -> int:
    from training.eval_stylegan import eval_stylegan as evaluate

    return _report(o, evaluate(o.models, n=o.n, report_dir=o.report_dir), "stylegan")


@dataclass(frozen=True, kw_only=True)
class EvalSCS:
    models: str = _models()
    targets: int = opt(50, "target masks")
    samples: int = opt(5, "images per target")
    n_init: int = opt(100, "candidate latents per sample")
    iterations: int = opt(50, "Adam steps on w+")
    edits: int = opt(20, "images with scripted SIE edits (4 edits each)")
    report_dir: str = _report_dir("reports/scs")
    json: bool = _json()


def eval_scs(o: EvalSCS) -> int:
    from training.eval_scs import eval_scs as evaluate

    return _report(o, evaluate(o.models, targets=o.targets, samples=o.samples, n_init=o.n_init,
                               iterations=o.iterations, edits_n=o.edits, report_dir=o.report_dir,
                               progress=_log(o.json)), "scs")


@dataclass(frozen=True, kw_only=True)
class EvalImagine:
    models: str = _models()
    n: int = opt(20, "held-out reference scenes")
    variations: int = opt(4, "variations per reference")
    n_real: int = opt(1000, "real scenes for fd_fc7")
    stage1: int | None = opt(None, "stage-1 iterations (default: the default schedule's)")
    stage2: int | None = opt(None, "stage-2 iterations (default: the default schedule's)")
    report_dir: str = _report_dir("reports/imagine")
    json: bool = _json()


def eval_imagine(o: EvalImagine) -> int:
    from semgen.pipelines.imagine import Schedule
    from training.eval_imagine import eval_imagine as evaluate

    schedule = Schedule(**{k: v for k, v in (("stage1", o.stage1), ("stage2", o.stage2)) if v is not None})
    return _report(o, evaluate(o.models, n=o.n, variations=o.variations, n_real=o.n_real, schedule=schedule,
                               progress=_log(o.json), report_dir=o.report_dir), "imagine")


@dataclass(frozen=True, kw_only=True)
class EvalHigan:
    models: str = _models()
    k: int = opt(100, "latents for re-scoring")
    edit_k: int = opt(64, "latents for the editing measures")
    report_dir: str = _report_dir("reports/higan")
    json: bool = _json()


def eval_higan(o: EvalHigan) -> int:
    from training.eval_higan import eval_higan as evaluate

    return _report(o, evaluate(o.models, k=o.k, edit_k=o.edit_k, progress=_log(o.json), report_dir=o.report_dir),
                   "higan")


@dataclass(frozen=True, kw_only=True)
class EvalPyramid:
    models: str = _models()
    n: int = opt(200, "held-out reference scenes per level")
    samples: int = opt(2, "samples per reference (>= 2 for diversity)")
    ops_n: int = opt(48, "references for repaint/composite/relabel/unnatural")
    report_dir: str = _report_dir("reports/pyramid")
    json: bool = _json()


def eval_pyramid(o: EvalPyramid) -> int:
    from training.eval_pyramid import eval_pyramid as evaluate

    return _report(o, evaluate(o.models, n=o.n, samples=o.samples, ops_n=o.ops_n, report_dir=o.report_dir,
                               progress=_log(o.json)), "pyramid")


EVAL = {  # command -> (options, function, help)
    "classifier": (EvalClassifier, eval_classifier, "top-1 accuracy on held-out scenes"),
    "segmenter": (EvalSegmenter, eval_segmenter, "mIoU on held-out renders"),
    "heads": (EvalHeads, eval_heads, "tables 1 and 2 of the linear-semantics paper on our generator"),
    "stylegan": (EvalStyleGAN, eval_stylegan, "fd_fc7 of the layer-wise generator against real scenes"),
    "scs": (EvalSCS, eval_scs, "semantic-conditional sampling (table 3) and semantic image editing"),
    "imagine": (EvalImagine, eval_imagine, "IMAGINE vs stage 1 only vs DeepInversion (table 1), controls"),
    "higan": (EvalHigan, eval_higan, "re-scoring by layer, hierarchy, editing, category transfer"),
    "pyramid": (EvalPyramid, eval_pyramid, "generation by level, re-painting, compositing, re-labeling, "
                                           "unnatural references"),
}


def register(parsers: dict) -> None:
    """`semgen bench|train|eval ...` on those of the dispatcher's parsers it is given (semgen_cli.py)."""
    if "bench" in parsers:
        bench = subcommands(parsers["bench"])
        command(bench.add_parser("scenes", help="scene rendering throughput"), BenchScenes, bench_scenes)
        command(bench.add_parser("imagine", help="IMAGINE seconds per variation and fd_fc7 against iterations"),
                BenchImagine, bench_imagine)
        command(bench.add_parser("stylegan", help="images/s of a StyleGAN2 training step by width, batch, bf16 and "
                                                  "channels_last"), BenchStyleGAN, bench_stylegan)
    for group, commands, run in (("train", TRAIN, _trained), ("eval", EVAL, lambda f: f)):
        if group in parsers:
            sub = subcommands(parsers[group])
            for name, (options, function, help_text) in commands.items():
                command(sub.add_parser(name, help=help_text), options, run(function))
