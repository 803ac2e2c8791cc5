"""Cancel and deadline reach SampleConditional's candidate stage (issue 17, item 2): the num_samples ×
n_init generator passes before the first step must not hold a job slot after the caller is gone.

An in-process semantics server on a tiny random bundle (CPU) with --max-candidates raised, so that the
candidate stage can be made to take seconds on this machine. The bounds are relative to that stage,
measured here: its time uncancelled, and its number of batches of generator passes."""

import threading
import time
from types import SimpleNamespace

import grpc
import pytest
from servingkit import (in_process_semantics_server, in_thread, one_torch_thread, sample_value,
                        semantics_bundle, wait_until)  # noqa: F401 (fixtures)

from serving.semantics.client import SemanticsClient, job_result, mask_array

IMAGE_SIZE = 16
NUM_SAMPLES, BATCH = 16, 64  # BATCH: the candidate stage's generator passes per batch (scs.candidate_pool)
MAX_CANDIDATES = 8192
STAGE_SECONDS = 3.0  # what the large candidate stage is sized to take uncancelled: 10× the deadline
DEADLINE = 0.3


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    options = dict(max_candidates=MAX_CANDIDATES, max_jobs=1)
    with in_thread(in_process_semantics_server(bundle, tmp_path_factory.mktemp("heads"), **options)) as s:
        with SemanticsClient(s.address, timeout=120) as client:
            s.client = client
            s.target = client.sample(seeds=[1], head="lse").masks[0]
            yield s


def conditional(server, n_init: int, timeout: float = 120):
    return server.client.sample_conditional(server.target, "lse", num_samples=NUM_SAMPLES, n_init=n_init,
                                            iterations=1, timeout=timeout)


def run_to_the_end(server, n_init: int) -> float:
    """Seconds an uncancelled SampleConditional (one step) holds its job slot."""
    started = time.monotonic()
    assert len(job_result(conditional(server, n_init)).images) == NUM_SAMPLES
    assert wait_until(lambda: server.engine.running_jobs == 0, timeout=10)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def stage(server):
    """The large candidate stage: n_init sized from a small run to take about STAGE_SECONDS here, then
    its time measured uncancelled and its number of batches of generator passes."""
    small = 64
    calibration = min(run_to_the_end(server, small) for _ in range(2))  # the first run also warms up
    n_init = min(MAX_CANDIDATES, max(small, int(small * STAGE_SECONDS / calibration)))
    measured = SimpleNamespace(n_init=n_init, seconds=run_to_the_end(server, n_init),
                               batches=-(-NUM_SAMPLES * n_init // BATCH))
    assert measured.seconds > 5 * DEADLINE, measured  # else the stage is too short to tell stopping from finishing
    return measured


@pytest.fixture
def passes(monkeypatch):
    """Counts the generator passes (one `synthesize` per batch) the server's pipeline makes."""
    from semgen.pipelines.semantics import SemanticModels

    calls, lock, synthesize = [0], threading.Lock(), SemanticModels.synthesize

    def counted(self, ws):
        with lock:
            calls[0] += 1
        return synthesize(self, ws)

    monkeypatch.setattr(SemanticModels, "synthesize", counted)
    return lambda: calls[0]


def freed(server, started: float, stage) -> float:
    """Seconds from `started` until no job holds a slot."""
    assert wait_until(lambda: server.engine.running_jobs == 0, timeout=3 * stage.seconds, interval=0.005)
    return time.monotonic() - started


def outcomes(server, outcome: str) -> float:
    return sample_value(server.metrics, "semgen_jobs_total", op="sample_conditional", outcome=outcome)


def test_deadline_in_the_candidate_stage_frees_the_slot(server, stage, passes):
    ended = outcomes(server, "deadline")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        job_result(conditional(server, stage.n_init, timeout=DEADLINE))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The old code scored every candidate first: it held the slot for the whole stage.
    took = freed(server, started, stage)
    assert took < 0.25 * stage.seconds and passes() < stage.batches / 2, (took, passes(), stage)
    assert wait_until(lambda: outcomes(server, "deadline") == ended + 1)
    assert len(job_result(conditional(server, 1)).images) == NUM_SAMPLES  # the slot takes the next job


def test_cancel_in_the_candidate_stage_frees_the_slot(server, stage, passes):
    ended = outcomes(server, "cancelled")
    started = time.monotonic()
    events = conditional(server, stage.n_init)
    assert wait_until(lambda: server.engine.running_jobs == 1, interval=0.005)  # no event before the first step
    events.cancel()
    took = freed(server, started, stage)
    assert took < 0.25 * stage.seconds and passes() < stage.batches / 2, (took, passes(), stage)
    assert wait_until(lambda: outcomes(server, "cancelled") == ended + 1)
    with pytest.raises(grpc.RpcError) as e:
        next(events)
    assert e.value.code() == grpc.StatusCode.CANCELLED


def test_the_candidate_check_runs_every_batch_and_changes_no_result(server, bundle):
    from semgen.pipelines.semantics import SemanticsPipeline

    pipe = SemanticsPipeline.from_dir(bundle)
    target, calls = mask_array(server.target), []
    checked = pipe.sample_conditional(target, "lse", 3, 7, n_init=70, iterations=2,
                                      on_candidates=lambda done, total: calls.append((done, total)))
    plain = pipe.sample_conditional(target, "lse", 3, 7, n_init=70, iterations=2)
    assert calls == [(0, 210), (64, 210), (128, 210), (192, 210), (210, 210)]  # batches of 64 passes
    assert (checked.latents == plain.latents).all() and (checked.images == plain.images).all()
    assert (checked.masks == plain.masks).all() and (checked.scores == plain.scores).all()
