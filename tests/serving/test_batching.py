"""The dynamic batcher on ONNX Runtime: batched results equal unbatched ones byte for byte, the
queue is bounded, and the batch metrics are recorded."""

import asyncio
import threading

import numpy as np
import pytest

from export.onnx import export_onnx
from random_bundles import make_random_bundle, make_random_semantics_bundle
from semgen.pipelines.forward import complete, run_batch
from semgen.runtime.onnx import OnnxModels
from semgen.pipelines.pyramid import PyramidPipeline
from semgen.pipelines.semantics import SemanticsPipeline
from semgen.pipelines.semantics.models import TRANSIENT_FACTOR
from serving.core.batcher import BatchPolicy, DynamicBatcher
from serving.core.errors import InvalidInput, ResourceExhausted
from serving.pyramid.engine import EmbeddedEngine
from serving.core.metrics import ServingMetrics
from servingkit import LEVELS, sample_value


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    models = make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)
    export_onnx(str(models), str(root / "onnx"))
    return models, OnnxModels(root / "onnx", threads=2)


def image(seed, size=40):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def pyramid_requests():
    region = np.zeros((40, 40), np.float32)
    region[10:30, 5:25] = 1
    return [
        ("generate", dict(image=image(0), levels="conv3", num_samples=1, seed=1)),
        ("generate", dict(image=image(1), levels={"conv2": region, "fc7": None}, num_samples=3, seed=2)),
        ("repaint", dict(image=image(2), region=region, level="conv4", num_samples=2, seed=3, class_index=1)),
        ("generate", dict(image=image(3), levels="fc8", num_samples=1, seed=4)),
    ]


def test_pyramid_batched_equals_each_request_alone(bundle):
    models, onnx = bundle
    pipe = PyramidPipeline.from_dir(models, onnx=onnx)
    requests = pyramid_requests()
    batched = run_batch(pipe, requests)
    for (op, args), result in zip(requests, batched):
        alone = complete(pipe, pipe.prepare(op, args))
        assert result.images.shape == alone.images.shape == (args["num_samples"], 32, 32, 3)
        assert np.array_equal(result.images, alone.images)
        assert result.class_index == alone.class_index
    # on ONNX Runtime, close to eager torch (uint8 pixels may differ by a rounding step)
    eager = PyramidPipeline.from_dir(models).generate(**requests[1][1])
    assert np.abs(eager.images.astype(int) - batched[1].images.astype(int)).max() <= 1


def test_a_bad_request_in_a_batch_fails_alone(bundle):
    models, onnx = bundle
    pipe = PyramidPipeline.from_dir(models, onnx=onnx)
    requests = pyramid_requests()[:2]
    requests.insert(1, ("generate", dict(image=image(9), levels="conv9", num_samples=1, seed=0)))
    results = run_batch(pipe, requests)
    assert isinstance(results[1], ValueError) and str(results[1]).startswith("level:")
    assert np.array_equal(results[2].images, complete(pipe, pipe.prepare(*requests[2])).images)


def test_sample_batched_equals_each_request_alone(bundle):
    models, onnx = bundle
    pipe = SemanticsPipeline.from_dir(models, onnx=onnx)
    assert pipe.onnx_heads == {"lse"}
    requests = [("sample", dict(seeds=[s, s + 7], psi=0.7, predictor="lse")) for s in range(3)]
    requests.append(("sample", dict(seeds=[11], predictor=None)))
    batched = run_batch(pipe, requests)
    for (op, args), result in zip(requests, batched):
        alone = complete(pipe, pipe.prepare(op, args))
        assert np.array_equal(result.images, alone.images)
        assert (result.masks is None) == (args["predictor"] is None)
        if result.masks is not None:
            assert np.array_equal(result.masks, alone.masks)


def test_engine_batches_concurrent_requests_to_the_same_bytes(bundle):
    models, onnx = bundle
    metrics = ServingMetrics()
    requests = pyramid_requests()

    async def scenario():
        engine = EmbeddedEngine.from_dir(models, device="cpu", metrics=metrics, onnx=onnx,
                                         policy=BatchPolicy(max_batch=4, max_delay=0.2, max_queue=8))
        try:
            together = await asyncio.gather(*(getattr(engine, op)(**args) for op, args in requests))
            alone = [await getattr(engine, op)(**args) for op, args in requests]
        finally:
            await engine.close()
        return together, alone

    together, alone = asyncio.run(scenario())
    for a, b in zip(together, alone):
        assert np.array_equal(a.images, b.images)
    # the four concurrent calls ran as one batch; the four sequential ones as batches of one
    assert sample_value(metrics, "semgen_batch_size_count", model="pyramid") == 5
    assert sample_value(metrics, "semgen_batch_size_sum", model="pyramid") == 8
    assert sample_value(metrics, "semgen_engine_queue_seconds_count", op="generate") == 6
    assert sample_value(metrics, "semgen_engine_queue_depth") == 0


class BlockingOps:
    """Runs nothing until released; counts the rows of every batch."""

    def __init__(self):
        self.release = threading.Event()
        self.batches = []

    def prepare(self, op, args):
        from semgen.pipelines.forward import Prepared

        if args["n"] < 0:
            raise ValueError("n: must be >= 0")
        return Prepared("k", {"x": np.full(1, args["n"])}, lambda out: int(out["x"][0]), nbytes=args.get("nbytes", 0))

    def run(self, key, rows):
        self.release.wait(10)
        self.batches.append(len(rows["x"]))
        return {"x": rows["x"] * 2}


def test_full_queue_is_refused_and_the_rest_complete():
    ops = BlockingOps()
    metrics = ServingMetrics()

    async def scenario():
        batcher = DynamicBatcher(ops, "test", BatchPolicy(max_batch=2, max_delay=0.0, max_queue=3), metrics)
        first = asyncio.ensure_future(batcher.call("op", {"n": 1}))  # taken at once, blocks in run
        await asyncio.sleep(0.1)
        queued = [asyncio.ensure_future(batcher.call("op", {"n": n})) for n in (2, 3, 4)]
        await asyncio.sleep(0.05)
        depth = sample_value(metrics, "semgen_engine_queue_depth")
        with pytest.raises(ResourceExhausted, match="queue: the test queue is full"):
            await batcher.call("op", {"n": 5})
        ops.release.set()
        results = await asyncio.gather(first, *queued)
        with pytest.raises(InvalidInput, match="n: must be"):  # the server goes on after refusing
            await batcher.call("op", {"n": -1})
        await batcher.close()
        return depth, results

    depth, results = asyncio.run(scenario())
    assert depth == 3
    assert results == [2, 4, 6, 8]
    assert ops.batches[:3] == [1, 2, 1]  # max_batch 2: the three waiting ones ran as 2 + 1


def test_a_batch_is_cut_by_bytes_as_well_as_by_count():
    """Requests of a large generator (nbytes: their estimated working memory) share fewer to a batch; one over
    the cap alone still runs, alone."""
    ops = BlockingOps()

    async def scenario():
        batcher = DynamicBatcher(ops, "test", BatchPolicy(max_batch=8, max_delay=0.0, max_queue=16,
                                                          max_batch_bytes=100))
        first = asyncio.ensure_future(batcher.call("op", {"n": 0, "nbytes": 10}))  # taken at once, blocks in run
        await asyncio.sleep(0.1)
        sizes = [40, 40, 40, 150, 30, 30]
        queued = [asyncio.ensure_future(batcher.call("op", {"n": n, "nbytes": b})) for n, b in enumerate(sizes, 1)]
        await asyncio.sleep(0.05)
        ops.release.set()
        results = await asyncio.gather(first, *queued)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0, 2, 4, 6, 8, 10, 12]
    # in queue order, what fits 100 bytes: 40 + 40; then 40 + 30 + 30; then 150 alone
    assert ops.batches == [1, 2, 3, 1]


def test_the_working_memory_of_a_sample_grows_with_the_generator(bundle):
    """The estimate the batcher and the per-request limit use: the image alone without a head; with one, every
    feature map a head reads and its logits."""
    models, _ = bundle
    pipe = SemanticsPipeline.from_dir(models)
    g, side = pipe.generator, pipe.image_size
    features = sum(c * r * r for c, r in zip(g.layer_channels(), g.layer_resolutions()))
    classes = len(pipe.predictor_classes("lse"))
    assert pipe.sample_bytes("lse") == 4 * (3 * side * side + TRANSIENT_FACTOR * features + classes * side * side)
    assert pipe.prepare("sample", dict(seeds=[1, 2, 3], predictor="lse")).nbytes == 3 * pipe.sample_bytes("lse")
    assert pipe.prepare("sample", dict(seeds=[1])).nbytes == pipe.sample_bytes(None) == 4 * 3 * side * side


def test_a_failing_graph_is_an_internal_error_not_bad_input():
    from semgen.pipelines.forward import GraphFailed

    class Broken(BlockingOps):
        def run(self, key, rows):
            raise ValueError("shapes do not match")  # a bug: must not read as the client's fault

    async def scenario():
        batcher = DynamicBatcher(Broken(), "test", BatchPolicy(max_batch=2, max_delay=0.0))
        try:
            with pytest.raises(GraphFailed, match="k: ValueError: shapes do not match"):
                await batcher.call("op", {"n": 1})
        finally:
            await batcher.close()

    asyncio.run(scenario())


def test_close_finishes_every_admitted_call():
    ops = BlockingOps()
    ops.release.set()

    async def scenario():
        batcher = DynamicBatcher(ops, "test", BatchPolicy(max_batch=2, max_delay=0.05))
        calls = [asyncio.ensure_future(batcher.call("op", {"n": n})) for n in range(5)]
        await asyncio.sleep(0)  # admitted, not yet batched
        await batcher.close()
        with pytest.raises(Exception, match="shutting down"):
            await batcher.call("op", {"n": 9})
        return [c.result() for c in calls]  # all done by the time close returned

    assert asyncio.run(scenario()) == [0, 2, 4, 6, 8]


def test_requests_on_eager_torch_never_share_a_batch(bundle):
    models, onnx = bundle
    pipe = SemanticsPipeline.from_dir(models, onnx=onnx)
    pipe.add_head("lse", pipe.heads["lse"])  # a replaced head is no longer the exported graph
    keys = [pipe.prepare("sample", dict(seeds=[s], predictor="lse")).key for s in range(3)]
    assert len(set(keys)) == 3
    # images without masks still run the exported synthesis graph, batched
    assert {pipe.prepare("sample", dict(seeds=[s])).key for s in range(3)} == {"synthesis:"}
    assert pipe.onnx_graph(None) == "synthesis_lse"


def test_a_request_that_fails_its_batch_fails_alone():
    """One request's inputs can make the graph run fail (an out-of-range label): the batch's other requests are run
    again without it and get their results, the same as alone."""
    import numpy as np

    from semgen.pipelines.forward import GraphFailed, Prepared, run_prepared

    class Doubling:
        def __init__(self):
            self.runs = []

        def run(self, key, rows):
            self.runs.append(len(rows["x"]))
            if (rows["x"] < 0).any():
                raise IndexError("index -1 is out of bounds")
            return {"y": rows["x"] * 2}

    ops = Doubling()
    prepared = [Prepared("k", {"x": np.array([v])}, lambda out: int(out["y"][0])) for v in (1, -1, 3)]
    results = run_prepared(ops, prepared)
    assert results[0] == 2 and results[2] == 6 and isinstance(results[1], GraphFailed)
    assert ops.runs == [3, 1, 1, 1]  # the batch, then each of its requests alone
