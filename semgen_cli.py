"""The `semgen` command. It lives outside the `semgen` package so that the library never imports
`training`, `export` or `serving` (DESIGN.md: dependencies point one way)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field, typed and defaulted from the field."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default)


def _options(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def cmd_scenes_preview(args):
    from semgen.data.preview import write_preview

    path = write_preview(args.out, n=args.n, size=args.size)
    print(f"wrote {path}")


def cmd_bench_scenes(args):
    from training.bench import bench_scenes

    _print(bench_scenes(n=args.n, size=args.size, repeats=args.repeats), args.json)


def cmd_train_classifier(args):
    from training.classifier import ClassifierOptions, train_classifier

    print(f"checkpoint: {train_classifier(_options(args, ClassifierOptions))}")


def cmd_train_pyramid(args):
    from training.pyramid import PyramidOptions, train_pyramid

    print(f"checkpoint: {train_pyramid(_options(args, PyramidOptions))}")


def cmd_train_stylegan(args):
    from training.stylegan import StyleGANOptions, train_stylegan

    print(f"checkpoint: {train_stylegan(_options(args, StyleGANOptions))}")


def cmd_train_segmenter(args):
    from training.heads import HeadsOptions
    from training.segmenter import SegmenterOptions, train_segmenter

    print(f"checkpoint: {train_segmenter(_options(args, SegmenterOptions))}")


def cmd_eval_segmenter(args):
    from training.segmenter import eval_segmenter

    _print(eval_segmenter(args.checkpoint, n=args.n), args.json)


def cmd_train_attributes(args):
    from training.attributes import AttributeOptions, train_attributes

    print(f"checkpoint: {train_attributes(_options(args, AttributeOptions))}")


def cmd_train_boundaries(args):
    from training.boundaries import BoundaryOptions, train_boundaries

    print(f"boundaries: {train_boundaries(_options(args, BoundaryOptions))}")


def cmd_eval_higan(args):
    from training.eval_higan import eval_higan

    _print(eval_higan(args.models, k=args.k, edit_k=args.edit_k, progress=_log(args)), args.json)


def cmd_train_heads(args):
    from training.heads import HeadsOptions, train_heads

    for path in train_heads(_options(args, HeadsOptions)):
        print(f"checkpoint: {path}")


def cmd_eval_heads(args):
    from training.eval_heads import eval_heads

    shots = tuple(int(s) for s in args.shots.split(","))
    _print(eval_heads(args.models, n=args.n, repeats=args.repeats, shots=shots, n_centers=args.n_centers,
                      progress=_log(args)), args.json)


def _log(args):
    """Progress lines: on stderr when stdout carries JSON."""
    return (lambda msg: print(msg, file=sys.stderr)) if args.json else print


def cmd_eval_stylegan(args):
    from training.eval_stylegan import eval_stylegan

    _print(eval_stylegan(args.models, n=args.n), args.json)


def cmd_eval_scs(args):
    from training.eval_scs import eval_scs

    _print(eval_scs(args.models, targets=args.targets, samples=args.samples, n_init=args.n_init,
                    iterations=args.iterations, edits_n=args.edits, progress=_log(args)), args.json)


def cmd_eval_imagine(args):
    from semgen.pipelines.imagine import Schedule
    from training.eval_imagine import eval_imagine

    schedule = Schedule(**{k: v for k, v in (("stage1", args.stage1), ("stage2", args.stage2)) if v is not None})
    _print(eval_imagine(args.models, n=args.n, variations=args.variations, n_real=args.n_real, schedule=schedule,
                        progress=_log(args)), args.json)


def cmd_bench_imagine(args):
    from training.eval_imagine import bench_imagine

    totals = tuple(int(t) for t in args.totals.split(","))
    _print(bench_imagine(args.models, n=args.n, variations=args.variations, totals=totals, repeats=args.repeats,
                         progress=_log(args)), args.json)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def cmd_bench_serve(args):
    from serving.bench.serve import ServeBench, bench_serve

    opts = ServeBench(models=args.models, concurrency=_ints(args.concurrency), requests=args.requests,
                      seconds=args.seconds, max_batch=args.max_batch, max_batch_delay_ms=args.max_batch_delay_ms,
                      engines=tuple(args.engines.split(",")), eager_batches=_ints(args.eager_batches), out=args.out,
                      onnx_dir=args.onnx_dir)
    _print(bench_serve(opts, progress=_log(args)), args.json)


def cmd_eval_classifier(args):
    from training.evaluate import eval_classifier

    _print(eval_classifier(args.checkpoint, n=args.n), args.json)


def cmd_eval_pyramid(args):
    from training.eval_pyramid import eval_pyramid

    _print(eval_pyramid(args.models, n=args.n, samples=args.samples, ops_n=args.ops_n, progress=_log(args)), args.json)


def cmd_export_onnx(args):
    from export.onnx import export_onnx

    _print(export_onnx(args.models, args.out, head=args.head), args.json)


def cmd_export_tensorrt(args):
    from export.tensorrt import TensorRTUnavailable, export_tensorrt

    try:
        report = export_tensorrt(args.onnx, args.out, max_batch=args.max_batch)
    except TensorRTUnavailable as e:  # expected off GPU nodes: one line and exit 2, not a traceback
        print(f"TensorRT is not available here: {e}. The ONNX files in {args.onnx} run on ONNX Runtime instead; "
              "build engines on a GPU node with `pip install tensorrt` and `semgen export tensorrt`.", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    _print(report, args.json)


def cmd_export_mar(args):
    from export.mar import export_mars

    _print(export_mars(args.models, args.out, args.onnx_dir, batch_size=args.batch_size,
                       max_batch_delay_ms=args.max_batch_delay_ms, workers=args.workers,
                       ort_threads=args.ort_threads), args.json)


def cmd_serve(args):
    from serving.server import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from training.attributes import AttributeOptions
    from training.boundaries import BoundaryOptions
    from training.classifier import ClassifierOptions
    from training.pyramid import PyramidOptions
    from training.heads import HeadsOptions
    from training.segmenter import SegmenterOptions
    from training.stylegan import StyleGANOptions

    parser = argparse.ArgumentParser(prog="semgen", description="semantic image generation and editing")
    sub = parser.add_subparsers(dest="command", required=True)

    scenes = sub.add_parser("scenes", help="the procedural scene world").add_subparsers(dest="what", required=True)
    p = scenes.add_parser("preview", help="grid of scenes, label maps and renditions")
    p.add_argument("--out", default="reports/scenes.png")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=cmd_scenes_preview)

    bench = sub.add_parser("bench", help="speed measurements").add_subparsers(dest="what", required=True)
    p = bench.add_parser("scenes", help="scene rendering throughput")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_scenes)
    p = bench.add_parser("imagine", help="IMAGINE seconds per variation and fd_fc7 against iterations")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=12, help="held-out references for the quality curve")
    p.add_argument("--variations", type=int, default=4)
    p.add_argument("--totals", default="50,100,200,400", help="iteration counts (split between the stages as the default schedule is)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_imagine)
    p = bench.add_parser("serve", help="gRPC throughput and latency against concurrency, against in-process "
                                       "ONNX Runtime and by engine; ONNX Runtime over eager torch")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--concurrency", default="1,4,16", help="requests in flight, one level each")
    p.add_argument("--requests", type=int, default=256, help="requests per (engine, method, concurrency) level")
    p.add_argument("--seconds", type=float, default=30.0, help="time cap per level")
    p.add_argument("--engines", default="embedded,torchserve", help="servers to measure, one at a time")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    p.add_argument("--eager-batches", default="1,8,32", help="batch sizes of ONNX Runtime against eager torch")
    p.add_argument("--onnx-dir", default="var/onnx", help="the cache of exported graphs (shared with the server)")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_serve)

    train = sub.add_parser("train", help="train the default models").add_subparsers(dest="what", required=True)
    p = train.add_parser("classifier")
    _add_options(p, ClassifierOptions)
    p.set_defaults(func=cmd_train_classifier)
    p = train.add_parser("pyramid")
    _add_options(p, PyramidOptions)
    p.set_defaults(func=cmd_train_pyramid)
    p = train.add_parser("stylegan", help="the layer-wise latent generator (linear semantics, HiGAN)")
    _add_options(p, StyleGANOptions)
    p.set_defaults(func=cmd_train_stylegan)
    p = train.add_parser("segmenter", help="the supervisor segmenter (labels generated images)")
    _add_options(p, SegmenterOptions)
    p.set_defaults(func=cmd_train_segmenter)
    p = train.add_parser("heads", help="semantic heads (LSE, NSE-1, NSE-2) on generated samples, full or few-shot")
    _add_options(p, HeadsOptions)
    p.set_defaults(func=cmd_train_heads)
    p = train.add_parser("attributes", help="the attribute predictor HiGAN scores images with")
    _add_options(p, AttributeOptions)
    p.set_defaults(func=cmd_train_attributes)
    p = train.add_parser("boundaries", help="HiGAN boundaries: score sampled latents, one linear SVM per score")
    _add_options(p, BoundaryOptions)
    p.set_defaults(func=cmd_train_boundaries)

    ev = sub.add_parser("eval", help="evaluate models, write reports/").add_subparsers(dest="what", required=True)
    p = ev.add_parser("classifier")
    p.add_argument("--checkpoint", default="artifacts/classifier")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_classifier)

    p = ev.add_parser("segmenter")
    p.add_argument("--checkpoint", default="artifacts/segmenter")
    p.add_argument("--n", type=int, default=1000, help="held-out renders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_segmenter)

    p = ev.add_parser("heads", help="tables 1 and 2 of the linear-semantics paper on our generator")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=1000, help="fresh evaluation samples")
    p.add_argument("--repeats", type=int, default=5, help="few-shot repeats with different samples")
    p.add_argument("--shots", default="1,4,8,16")
    p.add_argument("--n-centers", type=int, default=500, help="samples for the class centres")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_heads)

    p = ev.add_parser("stylegan", help="fd_fc7 of the layer-wise generator against real scenes")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_stylegan)

    p = ev.add_parser("scs", help="semantic-conditional sampling (table 3) and semantic image editing")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--targets", type=int, default=50)
    p.add_argument("--samples", type=int, default=5, help="images per target")
    p.add_argument("--n-init", type=int, default=100, help="candidate latents per sample")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--edits", type=int, default=20, help="images with scripted SIE edits (4 edits each)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_scs)

    p = ev.add_parser("imagine", help="IMAGINE vs stage 1 only vs DeepInversion (table 1), controls")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=20, help="held-out reference scenes")
    p.add_argument("--variations", type=int, default=4, help="variations per reference")
    p.add_argument("--n-real", type=int, default=1000, help="real scenes for fd_fc7")
    p.add_argument("--stage1", type=int, default=None, help="iterations (default: the default schedule)")
    p.add_argument("--stage2", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_imagine)

    p = ev.add_parser("higan", help="re-scoring by layer, hierarchy, editing, category transfer")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--k", type=int, default=100, help="latents for re-scoring")
    p.add_argument("--edit-k", type=int, default=64, help="latents for the editing measures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_higan)

    p = ev.add_parser("pyramid")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=200, help="held-out reference scenes per level")
    p.add_argument("--samples", type=int, default=2, help="samples per reference (>= 2 for diversity)")
    p.add_argument("--ops-n", type=int, default=48, help="references for repaint/composite/relabel/unnatural")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_pyramid)

    export = sub.add_parser("export", help="convert the models for other runtimes").add_subparsers(dest="what", required=True)
    p = export.add_parser("onnx", help="classifier, mapping and synthesis+head as ONNX, with parity checks")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--out", default="exports/onnx")
    p.add_argument("--head", default="lse", help="the semantic head fused with the synthesis network")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_onnx)
    p = export.add_parser("tensorrt", help="FP16 TensorRT engines from the ONNX files, cached per model and GPU, "
                                           "with parity checks against ONNX Runtime (needs tensorrt and a CUDA GPU)")
    p.add_argument("--onnx", default="exports/onnx", help="the folder `semgen export onnx` wrote")
    p.add_argument("--out", default="exports/tensorrt", help="engine cache and parity.json")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the engines accept (smallest 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_tensorrt)
    p = export.add_parser("mar", help="TorchServe archives (pyramid, semantics, semantics_jobs, imagine) with the "
                                      "handler, the bundle, its ONNX graphs and a model-config.yaml each")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--out", default="exports/mar", help="the model store: <name>.mar + <name>-model-config.yaml")
    p.add_argument("--onnx-dir", default="var/onnx", help="the cache of exported graphs (shared with the server)")
    p.add_argument("--batch-size", type=int, default=8, help="batchSize of the forward models")
    p.add_argument("--max-batch-delay-ms", type=float, default=5, help="maxBatchDelay of the forward models")
    p.add_argument("--workers", type=int, default=1, help="minWorkers = maxWorkers of every model")
    p.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime threads in each worker")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_mar)

    client = sub.add_parser("client", help="call a running server").add_subparsers(dest="service", required=True)
    from serving.pyramid.client import add_pyramid_commands
    from serving.higan.client import add_attributes_command, add_manipulate_command
    from serving.imagine.client import add_imagine_commands
    from serving.semantics.client import add_semantics_commands

    add_pyramid_commands(client.add_parser("pyramid", help="PyramidService: generate, repaint, composite"))
    add_semantics_commands(client.add_parser(
        "semantics", help="SemanticsService: sample, segment, fit-head, list-heads, sample-conditional, edit"))
    add_imagine_commands(client.add_parser(
        "imagine", help="ImagineService: variations of a reference image by classifier inversion; `info`"))
    add_attributes_command(client.add_parser(
        "attributes", help="HiganService: the attribute boundaries, their levels and default layers"))
    add_manipulate_command(client.add_parser(
        "manipulate", help="HiganService: edit seeds or latents along attribute boundaries on chosen layers"))

    p = sub.add_parser("serve", help="serve the models over gRPC")
    from serving.server import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
