"""`semgen bench batch`: batch jobs of Generate requests (a) through a running server on the embedded engine,
(b) through `semgen serve --engine ray` with 1 and 2 forward replicas, (c) on Ray Data with 1 and 2 actors, (d)
submitted to Ray Jobs on a two-node cluster on loopback, in images/s and as ratios to the in-process limit, each
job's bytes checked against (a)'s; and the kill test: a job killed at random moments and resumed (a), and the same
for the Ray Jobs job (d), checked against an uninterrupted run for lost, duplicated and mismatched outputs. Writes
reports/batch/batch.json and .png.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from semgen.options import opt
from serving.bench.batch_checks import LocalRun, images_per_s, kill_test, mismatched_files, results_s
from serving.bench.inprocess import LEVEL  # every request: one sample from the in-process limit's level
from serving.bench.process import export_onnx, server_process

REFERENCES = 16  # distinct reference scenes the requests cycle through


@dataclass(frozen=True, kw_only=True)
class BatchBench:
    models: str = opt("artifacts", "the model bundle")
    requests: int = opt(1000, "Generate requests per throughput job")
    concurrency: int = opt(8, "requests in flight of the online job")
    ray_actors: tuple[int, ...] = opt((1, 2), "Ray Data actors, one job each (empty: none)")
    ray_replicas: tuple[int, ...] = opt((1, 2), "forward replicas of `semgen serve --engine ray`, one job each "
                                                "(empty: none)")
    cluster: bool = opt(True, "the Ray Jobs case: the job, and the kill test, submitted to a two-node cluster")
    kills: int = opt(20, "kills of each kill test (online: SIGKILL; Ray Jobs: `ray job stop` and SIGKILL of the "
                         "driver in turn)")
    kill_requests: int = opt(500, "requests of the kill test's job")
    seed: int = opt(0, "seed of the kill moments")
    out: str = opt("reports/batch", "where batch.json, batch.png and these options go")
    onnx_dir: str = opt("var/onnx", "the bundle's ONNX export (made when missing)")


def write_manifest(folder: Path, requests: int) -> Path:
    """`requests` Generate lines over REFERENCES rendered scenes (one sample each, seed = the line's index), in
    `folder`."""
    from serving.bench.inprocess import reference

    for r in range(REFERENCES):
        (folder / f"ref{r:02d}.png").write_bytes(reference(r)[0])
    lines = [{"id": f"g{i:05d}", "rpc": "Generate", "image": f"ref{i % REFERENCES:02d}.png", "level": LEVEL,
              "num_samples": 1, "seed": i} for i in range(requests)]
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def batch_command(manifest: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "semgen_cli", "batch", "--manifest", str(manifest), "--out", str(out),
            "--no-progress", *args]


def run_job(cmd: list[str]) -> dict:
    """Run a batch job to its end; its summary (the last line it prints)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[3:])} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_batch(opts: BatchBench, progress: Callable[[str], None]) -> dict:
    from serving.bench.inprocess import inprocess_throughput, load_pipelines, reference

    export_onnx(opts.models, opts.onnx_dir)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"requests": opts.requests, "level": LEVEL, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="semgen-bench-batch-") as tmp:
        tmp = Path(tmp)
        manifest = write_manifest(tmp, opts.requests)
        pipe = load_pipelines(opts.models, opts.onnx_dir, ["generate"])["generate"]
        limit = inprocess_throughput(pipe, "generate", reference(0)[1], min(opts.requests, 256), 8)
        del pipe
        result["inprocess_images_per_s"] = round(limit, 2)
        progress(f"in-process limit: {limit:.1f} images/s")
        jobs = {}
        with server_process(["--models", opts.models, "--onnx-dir", opts.onnx_dir, "--log-level", "WARNING"],
                            name="server --engine embedded") as server:
            summary = run_job(batch_command(manifest, tmp / "online", "--address", server.address,
                                            "--concurrency", str(opts.concurrency)))
            jobs["online_embedded"] = summary
            progress(f"online (embedded engine, {opts.concurrency} in flight): {images_per_s(summary)} images/s")
            if opts.kills:
                (tmp / "kill").mkdir()
                small = write_manifest(tmp / "kill", opts.kill_requests)
                args = ("--address", server.address, "--concurrency", str(opts.concurrency))
                work_s = results_s(run_job(batch_command(small, tmp / "kill-ref", *args)))
                cmd = batch_command(small, tmp / "kill-job", *args)
                result["kill_test"] = kill_test(lambda k: LocalRun(cmd), lambda: run_job(cmd), tmp / "kill-job",
                                                tmp / "kill-ref", opts.kills, work_s, random.Random(opts.seed),
                                                progress)
                progress(f"kill test: {json.dumps(result['kill_test'])}")
        for replicas in opts.ray_replicas:
            with server_process(["--models", opts.models, "--onnx-dir", opts.onnx_dir, "--log-level", "WARNING",
                                 "--engine", "ray", "--ray-replicas", str(replicas)],
                                name=f"server --engine ray --ray-replicas {replicas}") as server:
                summary = run_job(batch_command(manifest, tmp / f"serve{replicas}", "--address", server.address,
                                                "--concurrency", str(opts.concurrency)))
            jobs[f"ray_serve_{replicas}_replicas"] = summary
            progress(f"online (--engine ray, {replicas} replica(s)): {images_per_s(summary)} images/s")
            summary["mismatched_vs_online"] = mismatched_files(tmp / "online", tmp / f"serve{replicas}")
        if opts.cluster:
            from serving.bench.ray_jobs import cluster_case  # imports Ray's job client: only when asked

            kill = (tmp / "kill" / "manifest.jsonl", tmp / "kill-ref") if opts.kills else (None, None)
            case = cluster_case(opts.models, opts.onnx_dir, manifest, tmp / "online", *kill, opts.kills, opts.seed,
                                tmp, progress)
            jobs["ray_jobs_2_nodes"] = case.pop("job")
            result["cluster"] = case
        for actors in opts.ray_actors:
            summary = run_job(batch_command(manifest, tmp / f"ray{actors}", "--ray", "--models", opts.models,
                                            "--onnx-dir", opts.onnx_dir, "--concurrency", str(actors)))
            jobs[f"ray_data_{actors}_actors"] = summary
            progress(f"Ray Data, {actors} actor(s): {images_per_s(summary)} images/s after "
                     f"{summary['this_run']['first_result_s']} s of start-up")
            summary["mismatched_vs_online"] = mismatched_files(tmp / "online", tmp / f"ray{actors}")
    result["jobs"] = {name: {"images_per_s": images_per_s(s), "ratio_to_inprocess": round(images_per_s(s) / limit, 3),
                             "ok": s["ok"], "failed": s["failed"], "elapsed_s": s["this_run"]["elapsed_s"],
                             "first_result_s": s["this_run"]["first_result_s"],
                             **({"mismatched_vs_online": s["mismatched_vs_online"]} if "mismatched_vs_online" in s
                                else {})}
                      for name, s in jobs.items()}
    kill_tests = [result.get("kill_test", {}), *([result["cluster"].get("kill_test", {})] if opts.cluster else [])]
    for name in ("lost", "duplicated", "mismatched"):  # over the kill tests
        result[name] = sum(k.get(name, 0) for k in kill_tests) if all(kill_tests) else None
    result["passed"] = all(kill_tests) and result["lost"] == result["duplicated"] == result["mismatched"] == 0 and all(
        j["failed"] == 0 and j.get("mismatched_vs_online", 0) == 0 for j in result["jobs"].values())
    (out / "batch.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "batch.png")
    return result


def plot(result: dict, path: Path) -> None:
    """images/s of each job beside the in-process limit."""
    from matplotlib.figure import Figure

    names = ["in-process limit", *(name.replace("_", " ") for name in result["jobs"])]
    values = [result["inprocess_images_per_s"], *(j["images_per_s"] for j in result["jobs"].values())]
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, values, color=["grey", *["tab:blue"] * (len(values) - 1)])
    ax.bar_label(bars, fmt="%.1f")
    ax.set(title=f"batch jobs of {result['requests']} Generate requests ({result['cpus']} CPUs)", ylabel="images/s")
    ax.tick_params(axis="x", labelrotation=20)
    fig.savefig(path, bbox_inches="tight")
