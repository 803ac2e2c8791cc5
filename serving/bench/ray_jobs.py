"""Batch jobs submitted to Ray Jobs (`ray job submit … -- semgen batch --ray --ray-address auto …`), as an operator
runs them on a cluster: the case of `semgen bench batch` on a two-node loopback cluster. A run is killed with Ray's
own `ray job stop` (SIGTERM to the driver, SIGKILL 3 s later) or, every other time, with a SIGKILL of the driver
process, as when its node dies; the same command submitted again resumes the job."""

from __future__ import annotations

import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
from ray.job_submission import JobStatus, JobSubmissionClient

from serving.bench.batch_checks import images_per_s, kill_test, mismatched_files
from serving.bench.cluster import loopback_cluster

JOB_TIMEOUT_S = 1800.0


def job_entrypoint(manifest: Path, out: Path, models: str, onnx_dir: str, actors: int) -> str:
    """The shell command Ray Jobs runs on the head node; paths absolute (the job's working directory is Ray's)."""
    return shlex.join([sys.executable, "-m", "semgen_cli", "batch", "--manifest", str(Path(manifest).resolve()),
                       "--out", str(Path(out).resolve()), "--no-progress", "--ray", "--ray-address", "auto",
                       "--models", str(Path(models).resolve()), "--onnx-dir", str(Path(onnx_dir).resolve()),
                       "--concurrency", str(actors)])


def drivers(out: Path) -> list[psutil.Process]:
    """The processes of a job's driver writing to `out` (the shell Ray Jobs starts, and semgen batch)."""
    mark = str(Path(out).resolve())
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "semgen_cli batch" in cmdline and mark in cmdline:
            found.append(p)
    return found


class RayJobRun:
    """One submission of a batch job to Ray Jobs; `hard`: killed with SIGKILL of its driver, not `ray job stop`."""

    def __init__(self, client: JobSubmissionClient, entrypoint: str, out: Path, hard: bool = False):
        self.client, self.out, self.hard = client, out, hard
        self.id = client.submit_job(entrypoint=entrypoint)

    def status(self) -> JobStatus:
        return self.client.get_job_status(self.id)

    def running(self) -> bool:
        return not self.status().is_terminal()

    def kill(self) -> str:
        if self.hard:
            for p in drivers(self.out):
                p.kill()
            return "SIGKILL of the driver"
        self.client.stop_job(self.id)
        return "ray job stop"

    def end(self, timeout_s: float = JOB_TIMEOUT_S) -> JobStatus:
        """Wait until Ray says the job ended and its driver is gone (the next run may take the folder)."""
        deadline = time.monotonic() + timeout_s
        while self.running() or drivers(self.out):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray job {self.id} still running after {timeout_s:g} s")
            time.sleep(0.2)
        return self.status()


def run_to_end(client: JobSubmissionClient, entrypoint: str, out: Path) -> dict:
    """Submit, wait for the end; the job's summary (summary.json). A job that did not finish raises with its logs."""
    run = RayJobRun(client, entrypoint, out)
    status = run.end()
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {run.id} ended {status}:\n{client.get_job_logs(run.id)[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def cluster_case(models: str, onnx_dir: str, manifest: Path, reference: Path, kill_manifest: Path | None,
                 kill_reference: Path | None, kills: int, seed: int, work: Path,
                 progress: Callable[[str], None]) -> dict:
    """On a two-node loopback cluster (1 CPU each): the job of `manifest` through Ray Jobs on 2 Ray Data actors,
    its bytes against the online job's in `reference`; then the kill test on `kill_manifest` against
    `kill_reference` (when given)."""
    result: dict = {"nodes": 2, "cpus_per_node": 1, "actors": 2}
    with loopback_cluster() as cluster:
        client = JobSubmissionClient(cluster.dashboard)
        summary = run_to_end(client, job_entrypoint(manifest, work / "jobs", models, onnx_dir, 2), work / "jobs")
        summary["mismatched_vs_online"] = mismatched_files(reference, work / "jobs")
        result["job"] = summary
        progress(f"Ray Jobs on two nodes: {images_per_s(summary)} images/s after "
                 f"{summary['this_run']['first_result_s']} s of start-up, "
                 f"{summary['mismatched_vs_online']} outputs unlike the online job's")
        if kill_manifest and kills:
            out = work / "jobs-kill"
            entrypoint = job_entrypoint(kill_manifest, out, models, onnx_dir, 2)
            items = len(kill_manifest.read_text().splitlines())
            result["kill_test"] = kill_test(
                lambda k: RayJobRun(client, entrypoint, out, hard=k % 2 == 1),
                lambda: run_to_end(client, entrypoint, out), out, kill_reference, kills,
                items / max(images_per_s(summary), 1e-9), random.Random(seed), progress)
            progress(f"Ray Jobs kill test: {json.dumps(result['kill_test'])}")
    return result
