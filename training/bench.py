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


SETTINGS = {"fp32": (False, False), "channels_last": (False, True), "bf16": (True, False),
            "bf16+channels_last": (True, True)}


def bench_stylegan(configs: list[tuple[str, str]], batch_sizes: tuple[int, ...] = (16, 32), steps: int = 4,
                   threads: int = 2, report_dir: str = "reports/bench", progress=print, device: str = "cpu") -> dict:
    """Images/s of one StyleGAN2 training step (G and D, R1 every 4th step) per (G channels, D channels),
    batch size and setting of `SETTINGS`: the median of `steps` timed steps after one warm-up step."""
    import torch

    from training.stylegan import StyleGANOptions, build_step, train_step, training_device

    on = training_device(device)
    finish = torch.cuda.synchronize if on.type == "cuda" else (lambda: None)  # time the GPU's work, not its queue

    torch.set_num_threads(threads)
    rows = []
    for g_channels, d_channels in configs:
        for batch in batch_sizes:
            for name, (bf16, channels_last) in SETTINGS.items():
                opt = StyleGANOptions(g_channels=g_channels, d_channels=d_channels, batch_size=batch, r1_every=4,
                                      bf16=bf16, channels_last=channels_last, device=device)
                s = build_step(opt)
                real = torch.rand(batch, 3, opt.image_size, opt.image_size) * 2 - 1
                times = []
                for step in range(steps + 1):
                    t0 = time.perf_counter()
                    train_step(s, real, None, step, torch.Generator().manual_seed(step))
                    finish()
                    times.append(time.perf_counter() - t0)
                rate = batch / statistics.median(times[1:])
                rows.append({"g_channels": g_channels, "d_channels": d_channels, "batch": batch, "setting": name,
                             "images_per_s": round(rate, 2), "g_params": sum(p.numel() for p in s.G.parameters()),
                             "d_params": sum(p.numel() for p in s.D.parameters())})
                progress(f"G {g_channels} D {d_channels} batch {batch} {name}: {rate:.1f} images/s")
    result = {"device": torch.cuda.get_device_name(on) if on.type == "cuda" else "cpu", "threads": threads,
              "steps": steps, "rows": rows}
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("stylegan_step.json" if on.type == "cpu" else "stylegan_step_cuda.json")).write_text(json.dumps(result, indent=2))
    return result
