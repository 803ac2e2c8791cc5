"""Built TensorRT engines (see `semgen export tensorrt`) at run time, beside ONNX Runtime in runtime/onnx.py.
Written against the TensorRT 10 Python API; device memory is torch CUDA tensors (no pycuda)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TensorRTUnavailable(RuntimeError):
    """`import tensorrt` fails or there is no CUDA GPU; the message says which."""


def tensorrt_available() -> tuple[bool, str]:
    reasons = []
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # PyPI's stub package raises other errors than ImportError
        reasons.append(f"`import tensorrt` fails ({type(e).__name__}: {e})")
    if not torch.cuda.is_available():
        build = "CPU-only" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        reasons.append(f"no CUDA GPU is visible (torch.cuda.is_available() is False; torch {torch.__version__}, {build})")
    return (not reasons, "; ".join(reasons))


class TensorRTModel:
    """A deserialized engine; `model(feeds)` -> outputs as numpy arrays, in `output_names` order."""

    def __init__(self, plan_path):
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {plan_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._dtype = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in names}
        self.stream = torch.cuda.Stream()  # not the legacy default stream, which TensorRT syncs around

    def __call__(self, feeds: dict) -> list:
        with torch.cuda.stream(self.stream):  # copies, allocations and the engine on one stream
            buffers = {}
            for name in self.input_names:
                x = torch.as_tensor(np.ascontiguousarray(feeds[name])).to("cuda", self._dtype[name]).contiguous()
                self.context.set_input_shape(name, tuple(x.shape))
                buffers[name] = x
            for name in self.output_names:  # output shapes are known once every input shape is set
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self._dtype[name], device="cuda")
            for name, buffer in buffers.items():
                self.context.set_tensor_address(name, buffer.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the log above)")
            outputs = [buffers[name].cpu().numpy() for name in self.output_names]
        self.stream.synchronize()
        return outputs
