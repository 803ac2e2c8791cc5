"""Golden replies of every RPC on every engine, and under other CPU kernel sets: the same request and seed give
the recorded reply, exactly where the value is exact (status codes, strings, integers, shapes) and within the
stated tolerance where it comes out of float kernels (images, losses, scores); see serving/bench/golden.py.

The requests (serving/bench/catalogue.py) are sent as raw bytes to the bundled models in artifacts/; the record
is tests/serving/golden/rpcs.json (+ rpcs.npz: decoded images and float vectors). To record anew on purpose (a
change of behaviour that is meant), run with SEMGEN_WRITE_GOLDEN=1 and say why in the commit.

On one machine and build the bytes are exact: the engines are checked against each other byte for byte in one
run. Another machine is simulated by running the server under other kernel sets (cross_kernels.KERNEL_SETS: ATen's
and oneDNN's instruction sets, ONNX Runtime's thread count, eager torch instead of ONNX Runtime), so a record that
only holds on the recording machine fails here, not on a user's box.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from serving.bench.catalogue import S, reseeded_calls, valid_calls
from serving.bench.cross_kernels import KERNEL_SETS, collect, served_calls
from serving.bench.golden import FORWARD, IMAGINE, compare, expected, load_record, save_record
from serving.core.metrics import ServingMetrics
from serving.core.protos import semantics_pb2
from servingkit import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
MODELS = ROOT / "artifacts"
LATENT_SHAPE = (10, 128)  # the bundled stylegan's w+

ENGINES = {"embedded": [], "torchserve": ["--engine", "torchserve"], "ray": ["--engine", "ray"]}
# the record each engine answers: Ray Serve's replicas give the embedded engine's replies; TorchServe's too, except
# FitHead, which it does not serve (UNIMPLEMENTED, and so the calls that use the fitted head differ)
BASE = {"embedded": None, "torchserve": "embedded", "ray": "embedded"}
RECORDED = {"embedded": "embedded", "torchserve": "torchserve", "ray": "embedded"}
RUNS = [("embedded", "native"), ("embedded", "avx2"), ("embedded", "default"), ("torchserve", "native"),
        ("ray", "native")]
EXACT_BYTES: dict[str, dict] = {}  # the embedded engine's sha256 of each reply in this run (this machine, build)


def calls_by_name() -> dict[str, tuple[str, str, bool, bytes]]:
    return {call[0]: call for call in valid_calls(LATENT_SHAPE)}


def serve_args(tmp_path: Path, models: Path = MODELS) -> list[str]:
    return ["--models", str(models), "--heads-dir", str(tmp_path / "heads"), "--onnx-dir", str(tmp_path / "onnx"),
            "--torchserve-dir", str(tmp_path / "ts"), "--max-batch", "4"]


@pytest.mark.parametrize("engine,kernels", RUNS, ids=[f"{e}-{k}" for e, k in RUNS])
def test_every_rpc_gives_the_recorded_reply(engine, kernels, tmp_path):
    if engine == "torchserve" and shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    env, flags = KERNEL_SETS[kernels]
    eager = "--runtime" in flags  # forward graphs on eager torch: no batched graph runs, no exported graphs
    with serve_subprocess([*serve_args(tmp_path), *ENGINES[engine], *flags], env=env) as server:
        got, arrays, hashes = collect(server.address, served_calls(kernels, valid_calls(LATENT_SHAPE)))
        with urllib.request.urlopen(server.metrics_url, timeout=30) as reply:
            exposition = reply.read().decode()
    if os.environ.get("SEMGEN_WRITE_GOLDEN") and kernels == "native" and RECORDED[engine] == engine:
        save_record(GOLDEN, engine, got, arrays, base=BASE[engine])
    golden, stored = load_record(GOLDEN)
    want, want_arrays = expected(golden, stored, RECORDED[engine])
    want = {name: record for name, record in want.items() if name in got}
    report = compare(want, want_arrays, got, arrays)
    assert {name: row for name, row in report.items() if not row["ok"]} == {}
    # what the calls show, so that a record full of errors cannot pass unnoticed
    assert got["generate"]["code"] == "OK" and got["generate_bad_level"]["code"] == "INVALID_ARGUMENT"
    assert got["imagine"]["code"] == "OK" and got["manipulate"]["code"] == "OK"
    assert len(got["generate"]["reply"]["images"]) == 2 and got["generate"]["reply"]["width"] == 64
    # on this machine and build: every engine gives the embedded engine's bytes, wherever it answers as it does
    if kernels == "native":
        if engine == "embedded":
            EXACT_BYTES.update(hashes)
        elif EXACT_BYTES:
            own = golden[engine]["calls"] if RECORDED[engine] == engine else {}
            same = [name for name in hashes if name not in own and name in EXACT_BYTES]
            assert {name: hashes[name] for name in same} == {name: EXACT_BYTES[name] for name in same}
    # the same metric names on every engine, and the engine's own series filled in (queue, compute, batch size)
    assert families(exposition) == families(ServingMetrics().render().decode())
    for name in ("semgen_engine_compute_seconds_count", "semgen_engine_queue_seconds_count", "semgen_model_info",
                 "semgen_build_info", *([] if eager else ["semgen_batch_size_count"])):
        assert any(line.startswith(name + "{") for line in exposition.splitlines()), name


def families(exposition: str) -> set[str]:
    """The semgen_ metric families (not the _created gauges prometheus_client adds once a series has a sample)."""
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE semgen_")}
    return {name for name in names if not name.endswith("_created")}


def test_the_portable_record_fails_on_a_one_step_change(tmp_path):
    """A weight of the pyramid generator nudged, another seed, a default changed, an iterative job reseeded:
    each fails the record that the unchanged call, on the same server, still passes."""
    from safetensors.numpy import load_file, save_file

    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    weights = models / "pyramid" / "model.safetensors"
    tensors = load_file(weights)
    tensors["to_rgb.bias"][0] += 0.05  # one weight: the red channel's output bias
    save_file(tensors, weights)

    by_name = calls_by_name()
    another_default = semantics_pb2.SampleRequest.FromString(by_name["sample_8shot"][3])
    another_default.ClearField("truncation_psi")  # the default psi, not 0.7
    mutations = [by_name["generate"],  # the nudged weight
                 *[c for c in reseeded_calls(LATENT_SHAPE) if c[0] != "generate"],  # another seed: sample, imagine
                 ("sample_8shot", S + "Sample", False, another_default.SerializeToString())]
    controls = [by_name[name] for name in ("sample", "sample_8shot", "imagine")]
    # eager torch: the nudged bundle needs no export, and its replies are within tolerance of ONNX Runtime's
    with serve_subprocess([*serve_args(tmp_path, models), "--runtime", "torch"]) as server:
        control, control_arrays, _ = collect(server.address, controls)
        mutated, mutated_arrays, _ = collect(server.address, mutations)
    want, want_arrays = expected(*load_record(GOLDEN), "embedded")
    passed = compare({n: want[n] for n in control}, want_arrays, control, control_arrays)
    failed = compare({n: want[n] for n in mutated}, want_arrays, mutated, mutated_arrays)
    assert all(row["ok"] for row in passed.values()), passed
    assert not any(row["ok"] for row in failed.values()), failed
    # and by far more than the tolerance: no change that small could pass
    assert failed["generate"]["mean_px"] > 2 * FORWARD.mean_px and failed["sample"]["mean_px"] > 10
    assert failed["imagine"]["mean_px"] > 4 * IMAGINE.mean_px


def test_bench_golden_reports_each_kernel_set_the_drift_and_another_seed(tmp_path):
    from serving.bench.cross_kernels import GoldenBench, bench_golden

    opts = GoldenBench(golden=str(GOLDEN), kernel_sets=("native", "avx2"), drift_iterations=(2,),
                       out=str(tmp_path / "report"), onnx_dir=str(tmp_path / "onnx"))
    lines = []
    result = bench_golden(opts, progress=lines.append)
    assert result["passed"] and set(result["kernel_sets"]) == {"native", "avx2"}
    assert set(result["kernel_sets"]["avx2"]["calls"]) == set(calls_by_name())
    assert set(result["drift"]["avx2"]) == {"imagine_2", "sample_conditional_2", "edit_semantics_2"}
    # the same jobs under another kernel set drift by far less than another seed moves them
    assert all(not row["ok"] and row["mean_px"] > 10 for row in result["another_seed"].values())
    assert max(row["mean_px"] for row in result["drift"]["avx2"].values()) < 1
    assert (tmp_path / "report" / "golden.png").stat().st_size > 0 and any(l.startswith("avx2: ") for l in lines)
    with pytest.raises(ValueError, match="kernel_sets: \\['avx9'\\] not of native, avx2, default"):
        bench_golden(GoldenBench(kernel_sets=("avx9",)))
