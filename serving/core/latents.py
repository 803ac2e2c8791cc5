"""Latents on the wire (the Latents message of semantics.proto, which HiganService uses too), for servers and clients."""

from __future__ import annotations

import numpy as np

from serving.core.protos import semantics_pb2 as pb


def latents_message(latents) -> pb.Latents:
    """An array [N, num_ws, w_dim] / [N, w_dim] (or a Latents message, passed through)."""
    if isinstance(latents, pb.Latents):
        return latents
    values = np.asarray(latents, dtype=np.float32)
    return pb.Latents(shape=list(values.shape), values=values.ravel().tolist())


def latents_array(message: pb.Latents) -> np.ndarray:
    return np.asarray(message.values, dtype=np.float32).reshape(list(message.shape))
