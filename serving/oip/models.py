"""The tensor models a server offers over the Open Inference Protocol, and one inference on them.

The models are the exported graphs of the loaded engines (`graphs`: name -> GraphSpec): the pyramid
generator and the classifier with its levels (pyramid engine), the layer-wise generator's mapping and
its synthesis with each exported head (semantics engine). A model's version is the start of its .onnx
file's sha256. GRPC and HTTP share this module, so they share checks, limits and errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from semgen.pipelines.graphs import check_inputs
from serving.core.admission import Admission
from serving.core.errors import InvalidInput, NotFound, Unavailable
from serving.core.metrics import semgen_version
from serving.core.validation import Limits, choices, quote

SERVER_NAME = "semgen"
PLATFORM = "onnxruntime_onnx"  # what Triton calls a model on ONNX Runtime


@dataclass(frozen=True)
class TensorModel:
    spec: Any  # semgen.pipelines.graphs.GraphSpec
    engine: Any  # an engine with `infer(graph, inputs, max_rows)` (serving.core.graphs.GraphCalls)

    @property
    def version(self) -> str:
        return self.spec.fingerprint[:16]

    def metadata(self) -> dict:
        spec = self.spec.to_dict()
        return {"name": spec["name"], "versions": [self.version], "platform": PLATFORM,
                "inputs": spec["inputs"], "outputs": spec["outputs"]}


class TensorModels:
    """Empty (not ready) until `attach`; then the graphs of every loaded engine."""

    def __init__(self, limits: Limits, admission: Admission):
        self.limits, self.admission = limits, admission
        self._models: dict[str, TensorModel] = {}
        self._attached = False
        self._backend_up: Callable[[], bool] | None = None
        self._backend_degraded: Callable[[], str] | None = None

    def attach(self, engines: list, backend_up: Callable[[], bool] | None = None,
               backend_degraded: Callable[[], str] | None = None) -> None:
        for engine in engines:
            for name, spec in getattr(engine, "graphs", {}).items():
                self._models[name] = TensorModel(spec, engine)
        self._backend_up, self._backend_degraded = backend_up, backend_degraded
        self._attached = True

    def degraded(self) -> str:
        """What capacity the backend lacks while serving ("" when none)."""
        return self._backend_degraded() if self._attached and self._backend_degraded else ""

    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> list[TensorModel]:
        return [self._models[name] for name in self.names()]

    def ready(self) -> bool:
        return self._attached and (self._backend_up is None or self._backend_up())

    def model(self, name: str, version: str = "") -> TensorModel:
        if not self._attached:
            raise Unavailable("model: still loading; retry shortly")
        if name not in self._models:
            known = choices(tuple(self.names())) or "none (this server runs no exported graph)"
            raise NotFound(f"model_name: no model named {quote(name)}; models: {known}")
        model = self._models[name]
        if version and version != model.version:
            raise NotFound(f"model_version: {name} has only version {model.version}, not {quote(version)}")
        return model

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.model(name, version)
        except (NotFound, Unavailable):
            return False
        return self.ready()

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": semgen_version(), "extensions": []}

    async def infer(self, name: str, version: str, inputs: dict[str, np.ndarray],
                    requested: list[str]) -> tuple[TensorModel, dict[str, np.ndarray]]:
        """The outputs `requested` (all when empty), in the model's order, of one call. Bounded before any work:
        rows by --max-samples, input + output bytes by --max-request-decoded-bytes and the server's budget."""
        model = self.model(name, version)
        if not self.ready():
            raise Unavailable("model: the backend is down; retry shortly")
        spec = model.spec
        outputs = [t.name for t in spec.outputs]
        for out in requested:
            if out not in outputs:
                raise InvalidInput(f"outputs[{out}]: {name} has no output of that name; its outputs are "
                                   f"{', '.join(outputs)}")
        try:
            rows = check_inputs(spec, inputs, self.limits.max_samples)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        nbytes = sum(a.nbytes for a in inputs.values()) + rows * spec.output_bytes_per_row()
        if nbytes > self.limits.max_request_decoded_bytes:
            raise InvalidInput(f"inputs: {nbytes} bytes of inputs and outputs is over the limit of "
                               f"{self.limits.max_request_decoded_bytes} per request")
        with self.admission.hold(nbytes, "inputs"):
            result = await model.engine.infer(name, inputs, self.limits.max_samples)
        return model, {out: result[out] for out in (requested or outputs)}
