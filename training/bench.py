"""Speed measurements that print JSON and write reports/bench/."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from semgen.data.scenes import render_scene


def bench_scenes(n: int = 1000, size: int = 64, repeats: int = 3, report_dir: str = "reports/bench") -> dict:
    """Single-process scene rendering throughput (median of `repeats` runs of n scenes)."""
    for s in range(20):  # warm caches (grids, interpolation indices)
        render_scene(s, size)
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for s in range(r * n, (r + 1) * n):
            render_scene(s, size)
        rates.append(n / (time.perf_counter() - t0))
    result = {"images_per_s": round(statistics.median(rates), 1), "size": size, "n": n,
              "runs": [round(x, 1) for x in rates]}
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenes.json").write_text(json.dumps(result, indent=2))
    return result
