"""`semgen bench serve` (serving/bench/) on a tiny random bundle. The last test starts server
subprocesses: the embedded engine, and one that cannot start."""

import json
import math

import pytest

from serving.bench.inprocess import inprocess_throughput, load_pipelines, ort_over_eager, reference
from serving.bench.serve import ServeBench, bench_serve, summarize


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from random_bundles import make_random_bundle, make_random_semantics_bundle

    root = tmp_path_factory.mktemp("bench")
    return root, make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)


def test_summary_of_known_latencies():
    latencies = [ms / 1000 for ms in range(1, 101)] + [0.0005, 0.0007]  # 1..100 ms OK, two fast failures
    codes = ["OK"] * 100 + ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]
    assert summarize(latencies, codes, wall=2.0) == {
        "requests": 102, "ok": 100, "seconds": 2.0, "throughput": 50.0,
        "p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0,  # nearest rank, failures left out
        "errors": {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}}
    assert summarize([], [], wall=1.0)["p99_ms"] is None


def test_inprocess_and_ort_over_eager_are_positive(bundle):
    root, models = bundle
    pipes = load_pipelines(str(models), str(root / "onnx"), ["generate", "sample"])
    _, image = reference(0)
    for method, pipe in pipes.items():
        assert math.isfinite(rate := inprocess_throughput(pipe, method, image, requests=6, max_batch=4)) and rate > 0
        ratios = ort_over_eager(pipe, method, image, batches=(1, 2), repeats=2)
        assert set(ratios) == {1, 2} and all(math.isfinite(r) and r > 0 for r in ratios.values())


def test_the_bench_refuses_an_unknown_runtime_or_device():
    with pytest.raises(ValueError, match="--runtime must be onnx or torch, got 'tensorrt'"):
        ServeBench(runtime="tensorrt")
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        ServeBench(device="gpu0")


def test_bench_serve_against_an_embedded_server(bundle):
    """On eager torch (--runtime torch, what a GPU run measures), which the server is given too."""
    root, models = bundle
    opts = ServeBench(models=str(models), concurrency=(1, 2), requests=4, seconds=20, max_batch=2,
                      engines=("embedded", "no-such-engine"), eager_batches=(1, 2), out=str(root / "report"),
                      onnx_dir=str(root / "onnx"), runtime="torch")
    lines = []
    result = bench_serve(opts, progress=lines.append)
    assert result["runtime"] == "torch" and result["device"]["torch_device"] == "cpu"
    assert "CPUExecutionProvider" in result["device"]["ort_providers"]
    for key in ("inprocess.generate", "inprocess.sample", "ort_over_eager.2", "ort_over_eager_sample.2",
                "served_over_inprocess.generate", "served_over_inprocess.sample", "served_over_inprocess",
                "engines.embedded.throughput", "engines.embedded.p50", "engines.embedded.p99"):
        assert result[key] > 0, key
    assert result["targets"] == {"served_over_inprocess>=0.8": result["served_over_inprocess"] >= 0.8,
                                 "ort_over_eager.32>=1.5": None}  # batch 32 was not measured
    assert [(lv["method"], lv["concurrency"]) for lv in result["levels"]] == [
        ("generate", 1), ("generate", 2), ("sample", 1), ("sample", 2)]
    assert all(lv["ok"] == lv["requests"] == 4 and not lv["errors"] for lv in result["levels"])
    assert json.loads((root / "report" / "serve.json").read_text())["levels"] == result["levels"]
    assert (root / "report" / "serve.png").stat().st_size > 0
    assert any("embedded generate c=2" in line for line in lines)
    # an engine that fails to start is recorded, not fatal, and has no numbers
    assert result["engines.no-such-engine.error"].startswith("server --engine no-such-engine exited with code 2")
    assert not any(key.startswith("engines.no-such-engine.") and key != "engines.no-such-engine.error"
                   for key in result)


def test_a_generator_without_the_lse_head_is_benched_on_plain_samples(tmp_path):
    """An imported generator has no heads/lse: Sample is measured without masks (the plain synthesis graph)."""
    import shutil

    from random_bundles import make_random_semantics_bundle
    from serving.bench.serve import bundle_methods

    models = make_random_semantics_bundle(tmp_path / "models", image_size=32)
    assert bundle_methods(models) == ["sample"]
    shutil.rmtree(models / "heads" / "lse")
    assert bundle_methods(models) == ["sample_plain"]
    pipe = load_pipelines(str(models), str(tmp_path / "onnx"), ["sample_plain"])["sample_plain"]
    assert pipe.onnx_graph(None) == "synthesis"  # the plain graph, exported for it
    _, image = reference(0)
    assert inprocess_throughput(pipe, "sample_plain", image, requests=4, max_batch=2) > 0
    assert set(ort_over_eager(pipe, "sample_plain", image, batches=(2,), repeats=1)) == {2}
