"""`semgen bench soak` on the bundled models, on both engines: a mixed load of valid, crafted and malformed
calls, cancels and deadlines leaves no INTERNAL/UNKNOWN answer, no job running, RSS within the budget, fds
and threads where they were, and a server that still serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.bench.soak import SoakBench, bench_soak

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """One folder for both engines' exports (the bench builds them when missing)."""
    return tmp_path_factory.mktemp("exports")


@pytest.mark.parametrize("engine", ["embedded", "torchserve"])
def test_soak_leaves_the_server_as_it_found_it(engine, exports, tmp_path):
    if engine == "torchserve" and shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    opts = SoakBench(models=str(ROOT / "artifacts"), engine=engine, seconds=20, concurrency=6,
                     out=str(tmp_path / "report"), onnx_dir=str(exports / "onnx"), torchserve_dir=str(exports / "ts"))
    lines = []
    result = bench_soak(opts, progress=lines.append)
    assert result["targets"] == {key: True for key in result["targets"]}, result
    assert result["passed"] and result["broken"] == 0 and result["jobs_left"] == 0
    # the mix reached the server's every kind of answer, and the warm-up every RPC
    assert {"OK", "INVALID_ARGUMENT", "CANCELLED", "DEADLINE_EXCEEDED"} <= set(result["codes"])
    assert result["codes_by_kind"]["garbage"].keys() == {"INVALID_ARGUMENT"}
    assert result["warm_up"]["generate"] == result["warm_up"]["manipulate"] == result["warm_up"]["imagine"] == "OK"
    report = json.loads((tmp_path / "report" / f"soak_{engine}.json").read_text())
    assert report["rss_mib"]["peak"] >= report["rss_mib"]["start"] > 0 and len(report["samples"]) > 10
    assert (tmp_path / "report" / f"soak_{engine}.png").stat().st_size > 10_000
