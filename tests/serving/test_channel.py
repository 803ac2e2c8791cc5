"""The clients' channel: gRPC's own retry policy retries UNAVAILABLE (the call did not run) and nothing else."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from serving.core.protos import pyramid_pb2 as pb
from serving.pyramid.client import SemgenClient
from servingkit import png_bytes


class FlakyPyramid:
    """Generate answers `failures` times with `code`, then with one empty image."""

    def __init__(self, failures: int, code: grpc.StatusCode):
        self.failures, self.code, self.calls = failures, code, 0

    def generate(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, "model: still loading; retry shortly")
        return pb.GenerateResponse(images=[b"png"], class_index=0, level=request.level, width=8, height=8)


@pytest.fixture
def flaky():
    def start(failures: int, code: grpc.StatusCode):
        service = FlakyPyramid(failures, code)
        server = grpc.server(futures.ThreadPoolExecutor(2))
        handler = grpc.unary_unary_rpc_method_handler(service.generate, pb.GenerateRequest.FromString,
                                                      pb.GenerateResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "semgen.v1.PyramidService", {"Generate": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return service, f"127.0.0.1:{port}"

    servers = []
    yield start
    for server in servers:
        server.stop(0)


def test_unavailable_is_retried_by_grpc(flaky):
    service, address = flaky(2, grpc.StatusCode.UNAVAILABLE)
    with SemgenClient(address, timeout=30) as client:
        assert client.generate(png_bytes(), level="conv3") == [b"png"]
    assert service.calls == 3  # two refusals, then the answer


def test_other_errors_are_not_retried(flaky):
    service, address = flaky(1, grpc.StatusCode.INVALID_ARGUMENT)
    with SemgenClient(address, timeout=30) as client, pytest.raises(grpc.RpcError) as error:
        client.generate(png_bytes(), level="conv3")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and service.calls == 1


def test_retries_give_up_after_four_attempts(flaky):
    service, address = flaky(10, grpc.StatusCode.UNAVAILABLE)
    with SemgenClient(address, timeout=30) as client, pytest.raises(grpc.RpcError) as error:
        client.generate(png_bytes(), level="conv3")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and service.calls == 4
