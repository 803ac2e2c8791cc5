"""The bytes between the gateway and TorchServe handlers: lossless, no pickle.

`pack` turns nested dicts / lists / scalars / numpy arrays into one .npz archive: the arrays as
its members and the structure as JSON (an array stands there as {"__array__": name}). Dataclasses
are packed as dicts of their fields. Streamed messages are framed with an 8-byte length.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any, Iterator

import numpy as np

_STRUCTURE = "__structure__"


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


def unpack(data: bytes) -> Any:
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
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
