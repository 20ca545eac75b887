"""Serving the exported explainer: TF Serving clients (REST, gRPC) and a development stand-in.

Clients: RestClient, GrpcClient (both raise ServingError). The contract double, a development
stand-in for TensorFlow Serving, is tf_explainer.serving.server.ModelServer (tools/serve.py).
"""

from tf_explainer.serving.errors import ServingError
from tf_explainer.serving.grpc_client import GrpcClient
from tf_explainer.serving.rest_client import RestClient

__all__ = ["GrpcClient", "RestClient", "ServingError"]
