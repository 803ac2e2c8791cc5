"""`semgen serve`, `semgen batch`, `semgen bench serve|soak|batch|golden` and `semgen client ...`: the serving layer's
commands. No torch and no semgen.pipelines here: each word's modules are imported when the dispatcher asks for that word, so
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
def bench_options(name: str) -> type:
    """`semgen bench NAME`'s options: the bench's own + --json (made on first use: a bench imports its modules)."""
    base = _benches()[name][0]

    @dataclass(frozen=True, kw_only=True)
    class BenchOptions(base):
        json: bool = opt(False, "print the result as one JSON line (progress goes to stderr)")

    return BenchOptions


def _benches() -> dict:
    """name -> (options dataclass, run(options, progress) -> result dict)."""
    from serving.bench.autoscale import AutoscaleBench, bench_autoscale
    from serving.bench.batch import BatchBench, bench_batch
    from serving.bench.cross_kernels import GoldenBench, bench_golden
    from serving.bench.serve import ServeBench, bench_serve
    from serving.bench.soak import SoakBench, bench_soak

    return {"serve": (ServeBench, bench_serve), "soak": (SoakBench, bench_soak), "batch": (BatchBench, bench_batch),
            "golden": (GoldenBench, bench_golden), "autoscale": (AutoscaleBench, bench_autoscale)}


def run_bench(name: str, o) -> int:
    """Runs the bench, writes its options next to its report, prints the result; 1 when a bench that checks
    targets (`passed`) missed one."""
    base, bench = _benches()[name]
    opts = base(**{f.name: getattr(o, f.name) for f in dataclasses.fields(base)})
    result = bench(opts, progress=(lambda msg: print(msg, file=sys.stderr)) if o.json else print)
    write_options(o, o.out, f"{name}_options")
    print_result(result, o.json)
    return 0 if result.get("passed", True) else 1


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
    from serving.core.healthcheck import HealthOptions, client_health

    command(client.add_parser("health", help="grpc.health.v1: the server's status and each service's (exit 0: "
                                             "SERVING)"), HealthOptions, client_health)


def register(parsers: dict) -> None:
    """`semgen serve`, `semgen batch`, `semgen bench serve|soak|batch|golden`, `semgen client ...` on those of the
    dispatcher's parsers it is given."""
    if "serve" in parsers:
        from serving.options import ServeOptions

        command(parsers["serve"], ServeOptions, serve)
    if "bench" in parsers:
        benches = subcommands(parsers["bench"])
        for name, help in (("serve", "gRPC throughput and latency against concurrency, against in-process ONNX "
                                     "Runtime and by engine; ONNX Runtime over eager torch"),
                           ("soak", "a server under mixed load, crafted and malformed calls, cancels and deadlines: "
                                    "codes, RSS, fds, threads and jobs left; exit 1 on a missed target"),
                           ("batch", "batch jobs of Generate requests online, on Ray Data and through Ray Jobs on "
                                     "a two-node cluster, images/s against the in-process limit; jobs killed 20 "
                                     "times and resumed: lost, duplicated, mismatched"),
                           ("autoscale", "Ray Serve autoscaling 1-2 forward replicas on a two-node cluster under a "
                                         "load ramp: replicas over time, throughput per replica"),
                           ("golden", "the replies under other CPU kernel sets against the golden record: pixel and "
                                      "float differences per RPC, within tolerance or not; drift of the iterative "
                                      "jobs over their iterations; exit 1 outside tolerance")):
            command(benches.add_parser(name, help=help), bench_options(name), functools.partial(run_bench, name))
    if "batch" in parsers:
        from serving.batch.job import BatchOptions, run_batch

        command(parsers["batch"], BatchOptions, run_batch)
    if "client" in parsers:
        register_clients(subcommands(parsers["client"], dest="service"))
