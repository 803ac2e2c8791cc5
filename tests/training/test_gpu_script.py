"""The prepared GPU training call (training/gpu_stylegan.sh), dry-run on the CPU with a tiny network:
what it leaves in $OUT fits what the device tool brings back, and a second call goes on from the first."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "gpu_stylegan.sh"
TINY = dict(DEVICE="cpu", MINUTES="0.000001", G_CHANNELS="8,8,8,8,8", D_CHANNELS="8,8,8,8,8", BATCH="4",
            WORKERS="1", IMAGE_SIZE="64", Z_DIM="8", STEPS="10", BENCH_STEPS="1", BENCH_BATCHES="2")


def _call(out: Path, run: Path) -> str:
    env = dict(os.environ, **TINY, OUT=str(out), RUN=str(run), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_gpu_call_leaves_few_small_files_and_the_next_call_goes_on_from_them(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    first = _call(out, run)
    assert "stopped after" in first and "at step 1 of 10" in first  # the clock ended it after one step
    bench = json.loads(first.strip().splitlines()[-1])  # the bench's JSON closes the output
    assert bench["device"] == "cpu" and all(r["images_per_s"] > 0 for r in bench["rows"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)  # at most 2 folders down
    assert json.loads((out / "pack" / "warm.json").read_text())["step"] == 1
    # what came back is carried into the next call, which goes on at step 2
    shutil.copytree(out / "pack", run / "pack")
    shutil.rmtree(out)
    out.mkdir()
    second = _call(out, run)
    assert "going on from" in second and "at step 2 of 10" in second
    assert json.loads((out / "G" / "config.json").read_text())["step"] == 2
    assert {v.dtype for v in load_file(str(out / "pack" / "D.safetensors")).values()} == {torch.bfloat16}
