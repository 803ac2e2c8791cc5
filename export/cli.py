"""`semgen export onnx|tensorrt|mar` and `semgen import stylegan2`: the build step before serving. The server opens what these write:
`export onnx --cache C` → C/<fingerprint>/, `export mar --store S` → S/<key>/ (see semgen/bundle.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from semgen.options import REQUIRED, command, opt, print_result, subcommands, write_options

JSON_HELP = "print the result as one JSON line"


@dataclass(frozen=True, kw_only=True)
class ExportOnnx:
    models: str = opt("artifacts", "the model bundle")
    out: str = opt("exports/onnx", "where the graphs and parity.json go (without --cache)")
    head: str = opt("lse", "the semantic head fused with the synthesis network (without --cache)")
    cache: str = opt("", "export into <cache>/<fingerprint of the weights>/ (what `semgen serve --onnx-dir` "
                         "opens), skipped when up to date; prints the folder")
    json: bool = opt(False, JSON_HELP)


def export_onnx_command(o: ExportOnnx) -> int:
    if o.cache:
        from export.onnx import ensure_exported
        from semgen.bundle import ONNX_HEAD, Bundle

        if o.head != ONNX_HEAD:
            print(f"--head applies without --cache only: the cache holds what the server opens (head {ONNX_HEAD})",
                  file=sys.stderr)
            return 2

        built = not Bundle(o.models).onnx_up_to_date(o.cache)
        folder = ensure_exported(o.models, o.cache)
        if built:
            write_options(o, folder, "export_options")
        print(json.dumps({"folder": str(folder), "built": built}) if o.json else folder)
        return 0
    from export.onnx import export_onnx

    report = export_onnx(o.models, o.out, head=o.head)
    write_options(o, o.out, "export_options")
    print_result(report, o.json)
    return 0


@dataclass(frozen=True, kw_only=True)
class ExportTensorRT:
    onnx: str = opt("exports/onnx", "the folder `semgen export onnx` wrote")
    out: str = opt("exports/tensorrt", "engine cache and parity.json")
    max_batch: int = opt(32, "largest batch the engines accept (smallest 1)")
    json: bool = opt(False, JSON_HELP)


def export_tensorrt_command(o: ExportTensorRT) -> int:
    from export.tensorrt import TensorRTUnavailable, export_tensorrt

    try:
        report = export_tensorrt(o.onnx, o.out, max_batch=o.max_batch)
    except TensorRTUnavailable as e:  # expected off GPU nodes: one line and exit 2, not a traceback
        print(f"TensorRT is not available here: {e}. The ONNX files in {o.onnx} run on ONNX Runtime instead; "
              "build engines on a GPU node with `pip install tensorrt` and `semgen export tensorrt`.", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    write_options(o, o.out, "export_options")
    print_result(report, o.json)
    return 0


@dataclass(frozen=True, kw_only=True)
class ExportMar:
    models: str = opt("artifacts", "the model bundle")
    handler: str = opt(REQUIRED, "the TorchServe handler file to pack (serving/torchserve/handler.py)")
    out: str = opt("exports/mar", "the model store: <name>.mar + <name>-model-config.yaml (without --store)")
    store: str = opt("", "build into <store>/<key of bundle, handler and settings>/ (what `semgen serve --engine "
                         "torchserve` opens), skipped when up to date; prints the folder")
    onnx_cache: str = opt("var/onnx", "the cache of exported graphs (`semgen export onnx --cache`), exported into "
                                      "when missing", aliases=("--onnx-dir",))
    batch_size: int = opt(8, "batchSize of the forward models")
    max_batch_delay_ms: float = opt(5.0, "maxBatchDelay of the forward models")
    workers: int = opt(1, "minWorkers = maxWorkers of every model (without --store)")
    ort_threads: int = opt(2, "ONNX Runtime threads in each worker")
    json: bool = opt(False, JSON_HELP)


def export_mar_command(o: ExportMar) -> int:
    from export.mar import ensure_mars, export_mars
    from semgen.bundle import Bundle, torchserve_settings

    settings = torchserve_settings(o.batch_size, o.max_batch_delay_ms, o.ort_threads)
    if not Path(o.handler).is_file():
        print(f"--handler: {o.handler} is not a file", file=sys.stderr)
        return 2
    if o.store:
        if o.workers != ExportMar.workers:  # the server finds a store by bundle, handler and `settings` only
            print("--workers applies without --store only: a store's archives keep one worker per model "
                  "(TorchServe's own setting decides more)", file=sys.stderr)
            return 2
        built = not (Bundle(o.models).mar_store_dir(o.store, o.handler, settings) / "mars.json").exists()
        folder = ensure_mars(o.handler, o.models, o.store, o.onnx_cache, **settings)
        if built:
            write_options(o, folder, "export_options")
        print(json.dumps({"folder": str(folder), "built": built}) if o.json else folder)
        return 0
    report = export_mars(o.handler, o.models, o.out, o.onnx_cache, workers=o.workers, **settings)
    write_options(o, o.out, "export_options")
    print_result(report, o.json)
    return 0


@dataclass(frozen=True, kw_only=True)
class ImportStyleGAN2:
    src: str = opt(REQUIRED, "the checkpoint: an NVlabs network pickle (.pkl) or the PyTorch port's torch.save (.pt)",
                   positional=True)
    out: str = opt(REQUIRED, "the bundle folder to write (<out>/stylegan/)")
    format: str = opt("auto", "nvlabs, port, or auto (from the file)", choices=("auto", "nvlabs", "port"))
    network: str = opt("", "which network of the file (default G_ema for NVlabs, g_ema for the port)")
    size: int = opt(0, "port only: the image size it was trained at")
    style_dim: int = opt(512, "port only: its --latent / style_dim")
    n_mlp: int = opt(8, "port only: its mapping layers")
    channel_multiplier: int = opt(2, "port only: its --channel_multiplier")
    lr_mlp: float = opt(0.01, "port only: its mapping lr multiplier")
    replace: bool = opt(False, "overwrite an existing <out>/stylegan/")
    json: bool = opt(False, JSON_HELP)


def import_stylegan2_command(o: ImportStyleGAN2) -> int:
    from export.import_stylegan2 import import_stylegan2

    try:
        result = import_stylegan2(o.src, o.out, o.format, o.network, o.size, o.style_dim, o.n_mlp,
                                  o.channel_multiplier, o.lr_mlp, o.replace)
    except ValueError as e:  # bad file, flags that do not fit, a refused pickle: one line, nothing written
        print(f"semgen import stylegan2: {e}", file=sys.stderr)
        return 2
    write_options(o, o.out, "import_options")
    print_result(result, o.json)
    return 0


@dataclass(frozen=True, kw_only=True)
class ImportDirection:
    name: str = opt(REQUIRED, "the attribute name Manipulate's edits use", positional=True)
    npy: str = opt(REQUIRED, "the direction: a .npy of shape (1, w_dim) or (w_dim,) in the generator's w space",
                   positional=True)
    models: str = opt(REQUIRED, "the bundle (with stylegan/) that gets it in boundaries/")
    layers: str = opt("", "the w+ layers an edit moves by default, e.g. 6,7,8 or 6-8 (default: every layer)")
    replace: bool = opt(False, "overwrite a direction of that name")
    json: bool = opt(False, JSON_HELP)


def import_direction_command(o: ImportDirection) -> int:
    from export.import_direction import import_direction

    try:
        result = import_direction(o.models, o.name, o.npy, o.layers, o.replace)
    except ValueError as e:  # bad file, name or layers: one line, nothing written
        print(f"semgen import direction: {e}", file=sys.stderr)
        return 2
    print_result(result, o.json)
    return 0


def register(parsers: dict) -> None:
    """`semgen export ...` and `semgen import ...` on the dispatcher's parsers (semgen_cli.py)."""
    if "import" in parsers:
        command(subcommands(parsers["import"]).add_parser(
            "stylegan2", help="a StyleGAN2 checkpoint (NVlabs pickle, read without running it, or the PyTorch "
                              "port's) as a bundle folder that export and serve open"), ImportStyleGAN2,
            import_stylegan2_command)
        command(subcommands(parsers["import"]).add_parser(
            "direction", help="a w-space direction (.npy, as InterFaceGAN/HiGAN-style tools write) as a boundary "
                              "Manipulate edits along"), ImportDirection, import_direction_command)
    if "export" not in parsers:
        return
    export = subcommands(parsers["export"])
    command(export.add_parser("onnx", help="classifier, mapping and synthesis+head as ONNX, with parity checks"),
            ExportOnnx, export_onnx_command)
    command(export.add_parser("tensorrt", help="FP16 TensorRT engines from the ONNX files, cached per model and "
                                               "GPU, with parity checks against ONNX Runtime (needs tensorrt and a "
                                               "CUDA GPU)"), ExportTensorRT, export_tensorrt_command)
    command(export.add_parser("mar", help="TorchServe archives (pyramid, semantics, semantics_jobs, imagine) with the "
                                          "handler, the bundle, its ONNX graphs and a model-config.yaml each"),
            ExportMar, export_mar_command)
