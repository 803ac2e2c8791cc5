"""What the batch benches check of a job's folder: the kill test (a job killed at random moments and resumed,
against an uninterrupted run: lost, duplicated, mismatched outputs), the bytes of two jobs compared, and the rate
of a run."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


class LocalRun:
    """One run of a batch job as a child process of the bench."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> str:
        self.proc.send_signal(signal.SIGKILL)
        return "SIGKILL"

    def end(self) -> None:
        self.proc.wait()


def wait_for_work(run, out: Path, before: int, timeout_s: float = 600.0) -> None:
    """Until `run` has recorded more than `before` items in `out` (its work is under way), or has ended."""
    deadline = time.monotonic() + timeout_s
    while run.running() and len(records(out)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)


def kill_test(start: Callable[[int], object], finish: Callable[[], dict], out: Path, reference: Path, kills: int,
              work_s: float, rng: random.Random, progress: Callable[[str], None]) -> dict:
    """Start a run of the job writing to `out` (`start(k)`: a LocalRun or the like) `kills` times and kill it at a
    random moment each time, then let `finish()` run it to its end (its summary); compare the outputs and records
    with the uninterrupted run in `reference`, which wrote its results for `work_s`. One kill in five lands in the
    start-up (Ray, the models), the others once the run has recorded an item, spread so that they cover the job."""
    landed: dict[str, int] = {}
    for k in range(kills):
        before = len(records(out))
        run = start(k)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            wait_for_work(run, out, before)
            time.sleep(rng.uniform(0.0, 1.5 * work_s / kills))
        if run.running():
            how = run.kill()
            landed[how] = landed.get(how, 0) + 1
        run.end()
        progress(f"kill {k + 1}/{kills}: {len(records(out))} items recorded")
    summary = finish()
    expected, got = _outputs(reference), _outputs(out)
    keys = [r["key"] for r in records(out, all_lines=True)]
    return {
        "kills": kills, "kills_mid_job": sum(landed.values()), "kills_by_kind": landed, "items": summary["items"],
        "outputs": len(got), "lost": len(expected.keys() - got.keys()),
        "duplicated": (len(keys) - len(set(keys))) + len(got.keys() - expected.keys()),
        "mismatched": sum(got[name] != data for name, data in expected.items() if name in got),
        "stray_files": sorted(p.name for p in (out / "outputs").iterdir() if p.name.endswith(".tmp")),
    }


def results_s(summary: dict) -> float:
    """Seconds a run spent writing results: after its first one (Ray's and the models' start-up left out)."""
    return summary["this_run"]["elapsed_s"] - summary["this_run"]["first_result_s"]


def records(out: Path, all_lines: bool = False) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            found.append(json.loads(line))
    return found if all_lines else [r for r in found if r.get("status") == "OK"]


def mismatched_files(reference: Path, job: Path) -> int:
    """Outputs of `job` missing from `reference`'s or not the same bytes, and outputs of `reference` it lacks."""
    want, got = (_outputs(reference), _outputs(job))
    return len(want.keys() ^ got.keys()) + sum(got[name] != data for name, data in want.items() if name in got)


def _outputs(job: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (job / "outputs").iterdir()}


def images_per_s(summary: dict) -> float:
    """Outputs per second of a job's run, after its first result (Ray's and the models' start-up left out)."""
    return round((summary["outputs"] - 1) / max(1e-9, results_s(summary)), 2)
