"""`inference.GRPCInferenceService` (the Open Inference Protocol over gRPC), on the domain API's port."""

from __future__ import annotations

from google.protobuf import json_format

from serving.core.protos import OIP_SERVICE, oip_pb2 as pb
from serving.core.servicer import register_handlers, rpc_errors, unary_handlers
from serving.oip.models import TensorModels
from serving.oip.tensors import decode_grpc_inputs, encode_grpc_outputs


class InferenceServicer:
    def __init__(self, models: TensorModels):
        self.models = models

    @rpc_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.models.ready())

    @rpc_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.models.model_ready(request.name, request.version))

    @rpc_errors
    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.models.server_metadata(), pb.ServerMetadataResponse())

    @rpc_errors
    async def ModelMetadata(self, request, context):
        model = self.models.model(request.name, request.version)
        return json_format.ParseDict(model.metadata(), pb.ModelMetadataResponse())

    @rpc_errors
    async def ModelInfer(self, request, context):
        inputs = decode_grpc_inputs(request)
        model, outputs = await self.models.infer(request.model_name, request.model_version, inputs,
                                                 [o.name for o in request.outputs])
        reply = pb.ModelInferResponse(model_name=model.spec.name, model_version=model.version, id=request.id)
        # raw blobs, as Triton answers, unless the client sent typed contents (it may not read blobs)
        encode_grpc_outputs(reply, outputs, raw=bool(request.raw_input_contents) or not request.inputs)
        return reply


RPCS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def add_inference_servicer(server, servicer: InferenceServicer) -> None:
    register_handlers(server, OIP_SERVICE, unary_handlers(servicer, RPCS))
