"""Engines that forward to a backend running the embedded engines in other processes: TorchServe's workers
(serving/torchserve) or Ray Serve's replicas (serving/ray). They speak to it through a client with
`call(model, op, args)`, `stream(model, op, args)` (unpacked `serving.core.wire` events) and `close()`: the
pyramid, the semantics (Sample and Segment on the batched "semantics" model, SCS and SIE on "semantics_jobs") and
IMAGINE.

FitHead runs where the backend's replicas share the heads folder (Ray Serve: the jobs replica fits and saves, the
others take the head in on their next call); on TorchServe it is UNIMPLEMENTED (a fitted head would live in one
worker only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Protocol

import numpy as np

from semgen.bundle import Bundle, Service
from semgen.pipelines.forward import Op
from serving.engines import Engines
from serving.core.errors import Unsupported
from serving.core.graphs import graph_specs_of
from serving.imagine.engine import ImagineEngine, ImagineInfo, ImagineJob, StepProgress, Variations
from serving.pyramid.engine import Engine, Generated, ModelInfo
from serving.semantics.engine import HeadSummary, Progress, Samples, SemanticsEngine, SemanticsInfo
from serving.semantics.validation import known_head



class Client(Protocol):
    """What the remote engines need of a backend (TorchServeClient, RayServeClient)."""

    backend: str  # its name in messages
    fits_heads: bool  # whether its replicas share a heads folder, so that FitHead can be served

    async def call(self, model: str, op: str, args: dict | None = None) -> Any: ...

    def stream(self, model: str, op: str, args: dict | None = None) -> AsyncIterator[Any]: ...

    async def close(self) -> None: ...


class RemoteGraphCalls:
    """The exported graphs of the backend's batched model `_model`, called by tensor (the Open Inference Protocol's
    models): op "graph", batched over there with the domain calls, as on the embedded engine."""

    _client: Client
    _model: str
    graphs: dict = {}  # name -> GraphSpec

    async def _learn_graphs(self) -> None:
        self.graphs = graph_specs_of(await self._client.call(self._model, "graphs"))

    async def infer(self, graph: str, inputs: dict[str, np.ndarray], max_rows: int) -> dict[str, np.ndarray]:
        return await self._client.call(self._model, Op.GRAPH, dict(graph=graph, inputs=inputs, max_rows=max_rows))


class RemotePyramidEngine(RemoteGraphCalls, Engine):
    _model = "pyramid"

    def __init__(self, client: Client, info: dict):
        self._client = client
        self.info = ModelInfo(tuple(info["levels"]), tuple(info["class_names"]), int(info["image_size"]))

    @classmethod
    async def connect(cls, client: Client) -> "RemotePyramidEngine":
        engine = cls(client, await client.call("pyramid", "info"))
        await engine._learn_graphs()
        return engine

    async def generate(self, image, levels, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.GENERATE, dict(image=image, levels=dict(levels), num_samples=num_samples,
                                                      seed=seed, class_index=class_index))

    async def repaint(self, image, region, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.REPAINT, dict(image=image, region=region, level=level,
                                                     num_samples=num_samples, seed=seed, class_index=class_index))

    async def composite(self, image, object_image, box, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.COMPOSITE, dict(image=image, object_image=object_image, box=list(box),
                                                       level=level, num_samples=num_samples, seed=seed,
                                                       class_index=class_index))

    async def _generated(self, op: str, args: dict) -> Generated:
        v = await self._client.call("pyramid", op, args)
        return Generated(images=v["images"], class_index=int(v["class_index"]), level=v["level"])

    async def close(self) -> None:
        await self._client.close()


class RemoteSemanticsEngine(RemoteGraphCalls, SemanticsEngine):
    """Sample and Segment on the batched "semantics" model; SCS and SIE on "semantics_jobs"."""

    _model = "semantics"

    def __init__(self, client: Client, info: dict):
        self._client = client
        heads = {name: _head_summary(h) for name, h in info["heads"].items()}
        self._info = SemanticsInfo(int(info["image_size"]), tuple(info["latent_shape"]), heads,
                                   int(info.get("sample_bytes", 0)))

    @classmethod
    async def connect(cls, client: Client) -> "RemoteSemanticsEngine":
        engine = cls(client, await client.call("semantics", "info"))
        await engine._learn_graphs()
        return engine

    @property
    def info(self) -> SemanticsInfo:
        return self._info

    def _classes(self, head: str) -> tuple[str, ...]:
        known_head(head, self._info)
        return self._info.heads[head].class_names

    async def sample(self, seeds, latents, psi, head) -> Samples:
        classes = self._classes(head) if head else ()
        v = await self._client.call("semantics", Op.SAMPLE, dict(seeds=seeds, latents=latents, psi=psi,
                                                                predictor=head or None))
        return Samples(v["images"], v["latents"], v["masks"], classes)

    async def segment(self, latents, head) -> np.ndarray:
        self._classes(head)
        return (await self._client.call("semantics", Op.SAMPLE, dict(latents=latents, predictor=head)))["masks"]

    async def fit_head(self, name, latents, masks, class_names, seed, iterations, replace,
                       time_remaining) -> HeadSummary:
        if not self._client.fits_heads:
            raise Unsupported(f"FitHead: not served by the {self._client.backend} engine (a fitted head would live in "
                              "one worker only); fit heads on a server started with --engine embedded or ray")
        v = await self._client.call("semantics_jobs", "fit_head", dict(
            name=name, latents=latents, masks=masks, class_names=list(class_names), seed=seed, iterations=iterations,
            replace=replace, time_remaining=time_remaining))
        head = _head_summary(v)
        keep = getattr(self._client, "head_fitted", None)  # Ray: into the gateway's --heads-dir, the record
        if keep is not None:
            await keep(name)
        # the backend's replicas take the head in (from the heads mirror, or a shared folder); the gateway's list
        # learns it here
        self._info = dataclasses.replace(self._info, heads={**self._info.heads, name: head})
        return head

    def sample_conditional(self, target_mask, head, num_samples, seed, n_init, iterations, lr, space, psi,
                           preview_every, time_remaining) -> AsyncIterator[Progress | Samples]:
        return self._job("sample_conditional", dict(
            target_mask=target_mask, head=head, num_samples=num_samples, seed=seed, n_init=n_init,
            iterations=iterations, lr=lr, space=space, psi=psi, preview_every=preview_every,
            time_remaining=time_remaining))

    def edit(self, latent, target_mask, head, iterations, lr, space, preview_every,
             time_remaining) -> AsyncIterator[Progress | Samples]:
        return self._job("edit", dict(latent=latent, target_mask=target_mask, head=head, iterations=iterations,
                                      lr=lr, space=space, preview_every=preview_every, time_remaining=time_remaining))

    async def _job(self, op: str, args: dict) -> AsyncIterator[Progress | Samples]:
        async for v in self._client.stream("semantics_jobs", op, args):
            if "iteration" in v:
                yield Progress(int(v["iteration"]), int(v["total"]), float(v["loss"]), v["preview"])
            else:
                yield Samples(v["images"], v["latents"], v["masks"], tuple(v["class_names"]), v["scores"])

    async def close(self) -> None:
        await self._client.close()


def _head_summary(fields: dict) -> HeadSummary:
    """A HeadSummary from its fields as they come out of `serving.core.wire`."""
    return HeadSummary(fields["name"], fields["kind"], tuple(fields["class_names"]), bool(fields["bundled"]),
                       int(fields["shots"]))


class RemoteImagineEngine(ImagineEngine):
    def __init__(self, client: Client, info: dict):
        self._client = client
        self._info = ImagineInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in info.items()})
        self._running = 0

    @classmethod
    async def connect(cls, client: Client) -> "RemoteImagineEngine":
        return cls(client, await client.call("imagine", "info"))

    @property
    def info(self) -> ImagineInfo:
        return self._info

    @property
    def running_jobs(self) -> int:
        return self._running

    async def imagine(self, job: ImagineJob, time_remaining: float | None) -> AsyncIterator[StepProgress | Variations]:
        self._running += 1
        try:
            async for v in self._client.stream("imagine", "imagine", dict(job=job, time_remaining=time_remaining)):
                if "stage" in v:
                    yield StepProgress(int(v["stage"]), int(v["iteration"]), int(v["total"]), dict(v["losses"]),
                                       v["previews"])
                else:
                    yield Variations(v["images"], int(v["target_class"]), v["class_name"], v["predicted"],
                                     tuple(int(s) for s in v["seeds"]))
        finally:
            self._running -= 1

    async def close(self) -> None:
        await self._client.close()


async def connect_engines(client: Client, models: str) -> Engines:
    """The remote engines of what the bundle serves (HiganService excepted: it stays in the gateway)."""
    bundle = Bundle(models)
    engines = Engines()
    if bundle.has("pyramid"):
        engines.pyramid = await RemotePyramidEngine.connect(client)
    if bundle.serves(Service.SEMANTICS):
        engines.semantics = await RemoteSemanticsEngine.connect(client)
    if bundle.serves(Service.IMAGINE):
        engines.imagine = await RemoteImagineEngine.connect(client)
    return engines
