"""Tensors of the Open Inference Protocol <-> numpy arrays: gRPC (typed contents or raw little-endian
blobs) and JSON (flat or nested "data"). Every error names the tensor: "inputs[z]: ...".
"""

from __future__ import annotations

import math

import numpy as np

from semgen.pipelines.graphs import NUMPY_TYPES
from serving.core.errors import InvalidInput

# the typed-contents field of InferTensorContents each datatype travels in
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}
MAX_DIMS = 8
MAX_DIM = 1 << 31  # a larger size is no tensor anyone sends; it would also overflow the products below


def dtype_of(datatype: str, field: str) -> np.dtype:
    if datatype not in NUMPY_TYPES:
        raise InvalidInput(f"{field}: datatype {datatype!r} is not supported here; use one of "
                           f"{', '.join(NUMPY_TYPES)}")
    return np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")


def checked_shape(shape, field: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_DIMS or any(not 0 <= d < MAX_DIM for d in shape):
        raise InvalidInput(f"{field}: shape {list(shape)} must have at most {MAX_DIMS} dimensions, each in "
                           f"0..{MAX_DIM - 1}")
    return shape


def from_raw(raw: bytes, datatype: str, shape, field: str) -> np.ndarray:
    """A raw blob (little-endian, row-major) as an array of `shape`."""
    dtype, shape = dtype_of(datatype, field), checked_shape(shape, field)
    want = math.prod(shape) * dtype.itemsize
    if len(raw) != want:
        raise InvalidInput(f"{field}: {len(raw)} raw bytes, but {datatype} {list(shape)} takes {want}")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def from_values(values, datatype: str, shape, field: str) -> np.ndarray:
    """Typed contents or JSON "data" (flat or nested, row-major) as an array of `shape`."""
    dtype, shape = dtype_of(datatype, field), checked_shape(shape, field)
    try:
        array = np.asarray(values, dtype=dtype.newbyteorder("="))
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{field}: data must be {datatype} numbers") from None
    if array.size != math.prod(shape):
        raise InvalidInput(f"{field}: {array.size} values, but shape {list(shape)} holds {math.prod(shape)}")
    return array.reshape(shape)


def datatype_of(array: np.ndarray) -> str:
    for name, kind in NUMPY_TYPES.items():
        if array.dtype == np.dtype(kind):
            return name
    raise TypeError(f"no Open Inference Protocol datatype for {array.dtype}")


def to_raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def decode_grpc_inputs(request) -> dict[str, np.ndarray]:
    """A ModelInferRequest's input tensors by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents: {len(raw)} blobs for {len(request.inputs)} inputs; send one "
                           "per input, in their order, or none")
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{tensor.name}]"
        if tensor.name in tensors:
            raise InvalidInput(f"{field}: given twice")
        if raw:
            tensors[tensor.name] = from_raw(raw[i], tensor.datatype, tensor.shape, field)
            continue
        dtype_of(tensor.datatype, field)
        if tensor.datatype not in CONTENTS_FIELD:
            raise InvalidInput(f"{field}: datatype {tensor.datatype} travels only in raw_input_contents")
        values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
        tensors[tensor.name] = from_values(values, tensor.datatype, tensor.shape, field)
    return tensors


def encode_grpc_outputs(response, outputs: dict[str, np.ndarray], raw: bool) -> None:
    """Fill a ModelInferResponse with `outputs`: raw blobs (`raw`) or typed contents."""
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        if raw or tensor.datatype not in CONTENTS_FIELD:  # FP16 has no typed contents: raw only
            response.raw_output_contents.append(to_raw(array))
        else:
            getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]).extend(array.ravel().tolist())
