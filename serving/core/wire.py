"""The bytes between the gateway and the processes that run its engines (TorchServe handlers, Ray Serve replicas):
lossless, no pickle.

`pack` turns nested dicts / lists / scalars / numpy arrays into one .npz archive: the arrays as
its members and the structure as JSON (an array stands there as {"__array__": name}). Dataclasses
are packed as dicts of their fields. Streamed messages are framed with an 8-byte length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import struct
from typing import Any, Iterator

import numpy as np

from semgen.bundle import MissingPart
from serving.core.errors import (AlreadyExists, DeadlineExceeded, InvalidInput, NotFound, ResourceExhausted,
                                 Unavailable, Unsupported, client_error)

_STRUCTURE = "__structure__"
# the engine errors a reply names; any other name is a bug over there (INTERNAL here)
_ERRORS = {cls.__name__: cls for cls in (InvalidInput, NotFound, AlreadyExists, ResourceExhausted, DeadlineExceeded,
                                         Unavailable, Unsupported, MissingPart)}


def reply(result) -> dict:
    """An engine's event, or an error under the engine's name for it (InvalidInput, NotFound, ...; anything
    else is a bug the gateway reports as INTERNAL)."""
    if isinstance(result, Exception):
        error = client_error(result)
        return {"error": type(error).__name__, "message": str(error.args[0]) if error.args else str(error)}
    return {"event": type(result).__name__, "value": result}


def value(unpacked: dict):
    """The event of an unpacked `reply`, or its error raised as the engine's exception."""
    if "error" in unpacked:
        raise _ERRORS.get(unpacked["error"], RuntimeError)(unpacked["message"])
    return unpacked["value"]


def pack(obj: Any) -> bytes:
    arrays: dict[str, np.ndarray] = {}

    def encode(x):
        if isinstance(x, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = x
            return {"__array__": name}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: encode(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            return {str(k): encode(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [encode(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"wire: cannot pack {type(x).__name__}")

    structure = json.dumps(encode(obj)).encode()
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{_STRUCTURE: np.frombuffer(structure, np.uint8)})
    return buf.getvalue()


PARSE_ATTEMPTS = 3


def _load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an npz. np.load parses each array's header with ast.literal_eval, and CPython 3.11's AST
    constructor keeps its recursion depth in state the threads share: a parse racing one on another thread fails
    with a spurious "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905; seen in a Ray
    Serve replica under load). The bytes are whole, so they are parsed again; the last attempt's error is raised."""
    for _ in range(PARSE_ATTEMPTS - 1):
        with contextlib.suppress(SystemError):
            return _read_npz(data)
    return _read_npz(data)


def _read_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def unpack(data: bytes) -> Any:
    arrays = _load_arrays(bytes(data))
    structure = json.loads(arrays.pop(_STRUCTURE).tobytes())

    def decode(x):
        if isinstance(x, dict):
            if set(x) == {"__array__"}:
                return arrays[x["__array__"]]
            return {k: decode(v) for k, v in x.items()}
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x

    return decode(structure)


def frame(message: bytes) -> bytes:
    """One streamed message: its length (8 bytes, big-endian), then the message."""
    return struct.pack(">Q", len(message)) + message


def unframe(stream) -> Iterator[bytes]:
    """The messages of a framed byte stream (anything with `read(n)`), until it ends."""
    while header := _read_exactly(stream, 8):
        (size,) = struct.unpack(">Q", header)
        body = _read_exactly(stream, size)
        if len(body) != size:
            raise ConnectionError(f"wire: stream ended inside a message ({len(body)} of {size} bytes)")
        yield body


def _read_exactly(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if 0 < len(data) < n and n == 8:
        raise ConnectionError("wire: stream ended inside a message header")
    return data
