"""The one import point for generated gRPC stubs (built by `python -m serving.build_protos`)."""

try:
    from serving._generated.inference import grpc_predict_v2_pb2 as oip_pb2
    from serving._generated.semgen.v1 import (
        higan_pb2,
        higan_pb2_grpc,
        imagine_pb2,
        imagine_pb2_grpc,
        pyramid_pb2,
        pyramid_pb2_grpc,
        semantics_pb2,
        semantics_pb2_grpc,
    )
except ImportError as e:  # pragma: no cover - only when the setup step was skipped
    raise ImportError(
        "gRPC stubs are missing: run `python -m serving.build_protos` (`make setup` does it)"
    ) from e

PYRAMID_SERVICE = pyramid_pb2.DESCRIPTOR.services_by_name["PyramidService"].full_name
SEMANTICS_SERVICE = semantics_pb2.DESCRIPTOR.services_by_name["SemanticsService"].full_name
IMAGINE_SERVICE = imagine_pb2.DESCRIPTOR.services_by_name["ImagineService"].full_name
HIGAN_SERVICE = higan_pb2.DESCRIPTOR.services_by_name["HiganService"].full_name
OIP_SERVICE = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # inference.GRPCInferenceService

__all__ = ["pyramid_pb2", "pyramid_pb2_grpc", "semantics_pb2", "semantics_pb2_grpc", "imagine_pb2",
           "imagine_pb2_grpc", "higan_pb2", "higan_pb2_grpc", "PYRAMID_SERVICE", "SEMANTICS_SERVICE",
           "IMAGINE_SERVICE", "HIGAN_SERVICE", "oip_pb2", "OIP_SERVICE"]
