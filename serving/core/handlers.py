"""gRPC method handlers by kind: the factory each kind of method (unary or streaming, each way) needs."""

from __future__ import annotations

from typing import Callable

import grpc

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def handler_factory(request_streaming: bool, response_streaming: bool) -> Callable[..., grpc.RpcMethodHandler]:
    return _FACTORIES[bool(request_streaming), bool(response_streaming)]


def behaviour(handler: grpc.RpcMethodHandler) -> Callable | None:
    """The function a handler runs, whatever its kind."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
