"""Exit 0 if the server's grpc.health.v1 status is SERVING, 1 otherwise (Docker HEALTHCHECK); and
`semgen client health`, which also lists every service's status.

    python -m serving.core.healthcheck --address 127.0.0.1:50051 [--service semgen.v1.PyramidService]
    python -m serving.core.healthcheck --tls-ca ca.pem [--tls-server-name NAME]     # a server with TLS

Health needs no token (the server exempts grpc.health.v1); with TLS it needs the CA (and, with mutual TLS,
a client certificate: --tls-cert/--tls-key).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semgen.options import add_options, opt, options_from_args
from serving.core.channel import Connection, open_channel


def check(address: str, service: str = "", timeout: float = 3.0, **channel_kwargs) -> str:
    """The status name (SERVING, NOT_SERVING, ...) or the gRPC error code name. `channel_kwargs`:
    open_channel's (credentials for TLS, server_name), e.g. Connection(...).channel_kwargs()."""
    with open_channel(address, **channel_kwargs) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@dataclass(frozen=True, kw_only=True)
class HealthOptions(Connection):
    timeout: float = opt(3.0, "seconds to wait for each answer")


def client_health(o: HealthOptions) -> int:
    """`semgen client health`: the whole server's status and each service's; 0 when the server is SERVING."""
    from serving.core.protos import HIGAN_SERVICE, IMAGINE_SERVICE, OIP_SERVICE, PYRAMID_SERVICE, SEMANTICS_SERVICE

    kwargs = o.channel_kwargs()
    statuses = {service: check(o.address, service, o.timeout, **kwargs)
                for service in ("", PYRAMID_SERVICE, SEMANTICS_SERVICE, IMAGINE_SERVICE, HIGAN_SERVICE, OIP_SERVICE)}
    for service, status in statuses.items():
        print(f"{service or 'server':32} {status}")
    return 0 if statuses[""] == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="", help='service name; "" (default) is the whole server')
    parser.add_argument("--timeout", type=float, default=3.0)
    add_options(parser, Connection)
    args = parser.parse_args(argv)
    conn = options_from_args(Connection, args)
    status = check(conn.address, args.service, args.timeout, **conn.channel_kwargs())
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
