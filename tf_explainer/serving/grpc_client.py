"""A client for TensorFlow Serving's gRPC API (the real server or the contract double).

  client = GrpcClient("localhost:8500", "explainer")
  outputs = client.predict({"image": uint8_batch}, output_filter=["classes", "part_peaks"])
  signature_defs = client.get_model_metadata()

Built on the tensorflow-serving-api stubs; failures raise ServingError with the call's status
code and details.
"""

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_explainer.serving import codec
from tf_explainer.serving.errors import ServingError
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE, GRPC_OPTIONS, SIGNATURE_DEF_FIELD


class GrpcClient:
    """gRPC calls on one model; version None serves the latest. timeout in seconds."""

    def __init__(self, target, model_name, version=None, timeout=60.0):
        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _spec(self, signature_name=""):
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = int(self.version)
        return spec

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.details() or str(error), error.code()) from None

    def predict_response(self, inputs, signature_name=DEFAULT_SIGNATURE, output_filter=None):
        """The raw PredictResponse (model_spec and TensorProto outputs)."""
        request = predict_pb2.PredictRequest(model_spec=self._spec(signature_name),
                                             output_filter=list(output_filter or ()))
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(codec.tensor_proto(value))
        return self._call(self._predictions.Predict, request)

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE, output_filter=None) -> dict:
        """Predict; inputs {name: array} (strings as bytes) -> {name: numpy array}."""
        response = self.predict_response(inputs, signature_name, output_filter)
        return {key: codec.ndarray(value) for key, value in response.outputs.items()}

    def _metadata_response(self):
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._spec(), metadata_field=[SIGNATURE_DEF_FIELD])
        return self._call(self._predictions.GetModelMetadata, request)

    def get_model_metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The model's SignatureDefMap (GetModelMetadata's signature_def field, unpacked)."""
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        if not self._metadata_response().metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs):
            raise ServingError("The metadata holds no SignatureDefMap.",
                               grpc.StatusCode.INTERNAL)
        return signature_defs

    def served_version(self) -> int:
        """The version the server answers with (the latest unless one was asked for)."""
        return self._metadata_response().model_spec.version.value

    def get_model_status(self) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec())
        return self._call(self._models.GetModelStatus, request)

    def close(self):
        self._channel.close()
