"""`semgen serve`, `semgen bench serve` and `semgen client ...`: the serving layer's commands. No torch and
no semgen.pipelines here: each word's modules are imported when the dispatcher asks for that word, so
`semgen client` reads its flags with the client modules only (the server loads when `serve` runs)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from semgen.options import command, opt, print_result, subcommands, write_options

if TYPE_CHECKING:
    from serving.options import ServeOptions


def serve(o: ServeOptions) -> int:
    from serving.server import run  # logs the options; writes nothing

    return run(o)


@functools.cache
def bench_serve_options() -> type:
    """`semgen bench serve`'s options: ServeBench + --json (made on first use: the bench imports the pipelines)."""
    from serving.bench.serve import ServeBench

    @dataclass(frozen=True, kw_only=True)
    class BenchServe(ServeBench):
        json: bool = opt(False, "print the result as one JSON line (progress goes to stderr)")

    return BenchServe


def bench_serve(o) -> int:
    from serving.bench.serve import ServeBench, bench_serve as bench

    opts = ServeBench(**{f.name: getattr(o, f.name) for f in dataclasses.fields(ServeBench)})
    result = bench(opts, progress=(lambda msg: print(msg, file=sys.stderr)) if o.json else print)
    write_options(o, o.out, "serve_options")
    print_result(result, o.json)
    return 0


def register_clients(client: argparse._SubParsersAction) -> None:
    from serving.higan.client import add_attributes_command, add_manipulate_command
    from serving.imagine.client import add_imagine_commands
    from serving.pyramid.client import add_pyramid_commands
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


def register(parsers: dict) -> None:
    """`semgen serve`, `semgen bench serve`, `semgen client ...` on those of the dispatcher's parsers it is given."""
    if "serve" in parsers:
        from serving.options import ServeOptions

        command(parsers["serve"], ServeOptions, serve)
    if "bench" in parsers:
        command(subcommands(parsers["bench"]).add_parser(
            "serve", help="gRPC throughput and latency against concurrency, against in-process ONNX Runtime and by "
                          "engine; ONNX Runtime over eager torch"), bench_serve_options(), bench_serve)
    if "client" in parsers:
        register_clients(subcommands(parsers["client"], dest="service"))
