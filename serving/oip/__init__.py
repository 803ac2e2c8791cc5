"""The Open Inference Protocol (KServe v2): the exported graphs as tensor models, over gRPC and HTTP."""
