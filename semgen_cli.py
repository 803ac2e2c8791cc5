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


def cmd_eval_classifier(args):
    from training.evaluate import eval_classifier

    _print(eval_classifier(args.checkpoint, n=args.n), args.json)


def cmd_eval_pyramid(args):
    from training.eval_pyramid import eval_pyramid

    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    _print(eval_pyramid(args.models, n=args.n, samples=args.samples, ops_n=args.ops_n, progress=log), args.json)


def cmd_serve(args):
    from serving.server import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from training.classifier import ClassifierOptions
    from training.pyramid import PyramidOptions

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

    train = sub.add_parser("train", help="train the default models").add_subparsers(dest="what", required=True)
    p = train.add_parser("classifier")
    _add_options(p, ClassifierOptions)
    p.set_defaults(func=cmd_train_classifier)
    p = train.add_parser("pyramid")
    _add_options(p, PyramidOptions)
    p.set_defaults(func=cmd_train_pyramid)

    ev = sub.add_parser("eval", help="evaluate models, write reports/").add_subparsers(dest="what", required=True)
    p = ev.add_parser("classifier")
    p.add_argument("--checkpoint", default="artifacts/classifier")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_classifier)

    p = ev.add_parser("pyramid")
    p.add_argument("--models", default="artifacts")
    p.add_argument("--n", type=int, default=200, help="held-out reference scenes per level")
    p.add_argument("--samples", type=int, default=2, help="samples per reference (>= 2 for diversity)")
    p.add_argument("--ops-n", type=int, default=48, help="references for repaint/composite/relabel/unnatural")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_pyramid)

    client = sub.add_parser("client", help="call a running server").add_subparsers(dest="service", required=True)
    from serving.client import add_pyramid_commands

    add_pyramid_commands(client.add_parser("pyramid", help="PyramidService: generate, repaint, composite"))

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
