"""The engine-side errors every service shares, and how a pipeline's input errors map onto them.

The servicers turn them into gRPC status codes in one place (`serving.core.servicer.rpc_errors`).
"""

from __future__ import annotations

import re
from typing import Callable


class InvalidInput(ValueError):
    """Bad client input; the message starts with the field name ("level: ...")."""


class Unavailable(RuntimeError):
    """The engine cannot take work now (loading, shutting down); the client may retry."""


class NotFound(LookupError):
    """An unknown model, head or attribute; the message starts with the field name."""


class AlreadyExists(RuntimeError):
    """Creating something that exists (a head name) without asking to replace it."""


class ResourceExhausted(RuntimeError):
    """The server is at a limit (running jobs); the client may retry later."""


class Unsupported(RuntimeError):
    """This engine does not offer the operation (another engine does)."""


class DeadlineExceeded(RuntimeError):
    """The request's deadline passed while the engine was working on it."""


_FIELD_PREFIX = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")  # "head: ...", "mask[conv3]: ..."


def client_error(e: Exception) -> Exception:
    """A pipeline's documented input errors as the engine's: ValueError -> InvalidInput; a KeyError
    for an unknown name ("head: no head named 'x'") -> NotFound. Anything else is returned as it is:
    a bug, which the client sees as INTERNAL."""
    if isinstance(e, ValueError):
        return InvalidInput(str(e))
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else ""
    if _FIELD_PREFIX.match(message):
        return NotFound(message)
    return e


def not_found_errors(fn: Callable, field: str) -> Callable:
    """`fn` with a pipeline's KeyError for an unknown name (message "<field>: ...", e.g.
    "head: no head named 'x'") as NotFound; other KeyErrors stay bugs."""

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as e:
            message = str(e.args[0]) if e.args else ""
            if message.startswith(f"{field}:"):
                raise NotFound(message) from None
            raise

    return call
