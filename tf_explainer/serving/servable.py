"""Loaded SavedModel versions and the models that hold them, for the contract double.

A `Servable` is one version folder: its SignatureDefs (read from saved_model.pb, exactly what TF
Serving reports as metadata), its callable signatures, and request handling that validates
before running. A `ServedModel` keeps the versions its policy asks for, loads new ones (warming
them up with assets.extra/tf_serving_warmup_requests, as TF Serving does) and drops old ones.
"""

import os
import threading

import grpc
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from tf_explainer.serving import codec
from tf_explainer.serving.config import versions_to_serve
from tf_explainer.serving.errors import ServingError, invalid_argument, not_found
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE
from tf_explainer.serving.signature import Signature
from tf_explainer.serving.warmup import WARMUP_FILE, read_warmup_requests

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def read_signature_defs(export_dir) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefMap of a SavedModel's (single) MetaGraph."""
    path = os.path.join(export_dir, "saved_model.pb")
    with open(path, "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in saved_model.meta_graphs[0].signature_def.items():
        signature_map.signature_def[key].CopyFrom(value)
    return signature_map


def _op_error_text(error):
    """The op's own message, without TensorFlow's node and stack-trace lines."""
    lines = [line.strip() for line in error.message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "[[", "[Op:"))]
    return " ".join(kept) or error.message


class Servable:
    """One loaded version of a model."""

    def __init__(self, name, version, export_dir, max_batch_size=None):
        self.name, self.version, self.export_dir = name, version, export_dir
        self.max_batch_size = max_batch_size
        self.signature_defs = read_signature_defs(export_dir)
        self._model = tf.saved_model.load(export_dir)
        self.signatures = {key: Signature.from_proto(key, self.signature_defs.signature_def[key])
                           for key in self._model.signatures}

    def signature(self, name) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise invalid_argument(f"Serving signature name: \"{name}\" not found in signature "
                                   f"def; this model has: {sorted(self.signatures)}.")
        return self.signatures[name]

    def predict(self, signature, arrays, output_filter=()) -> dict:
        """Validated run of `signature` on numpy inputs of its dtypes -> numpy outputs."""
        signature.check_arrays(arrays, self.max_batch_size)
        signature.check_output_filter(output_filter)
        function = self._model.signatures[signature.name]
        try:
            outputs = function(**{key: tf.convert_to_tensor(value, signature.inputs[key].dtype)
                                  for key, value in arrays.items()})
        except tf.errors.OpError as error:
            code = _STATUS_BY_NUMBER.get(error.error_code, grpc.StatusCode.INTERNAL)
            raise ServingError(f"Signature {signature.name!r} failed: {_op_error_text(error)}",
                               code) from None
        wanted = output_filter or signature.outputs
        return {key: outputs[key].numpy() for key in wanted}

    def predict_proto(self, request) -> predict_pb2.PredictResponse:
        """A PredictRequest (gRPC, warmup) -> PredictResponse."""
        signature = self.signature(request.model_spec.signature_name)
        signature.check_names(request.inputs)
        arrays = {}
        for key, proto in request.inputs.items():
            signature.check_dtype(key, proto.dtype)
            try:
                arrays[key] = codec.ndarray(proto)
            except (TypeError, ValueError) as error:
                raise invalid_argument(f"Input {key!r} is not a valid TensorProto: {error}")
        outputs = self.predict(signature, arrays, tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        self.fill_model_spec(response.model_spec, signature.name)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(codec.tensor_proto(value))
        return response

    def fill_model_spec(self, spec, signature_name=""):
        spec.name = self.name
        spec.version.value = self.version
        spec.signature_name = signature_name

    def warm_up(self):
        """Replays the version's warmup PredictionLogs; a failure fails the load, as in TF
        Serving."""
        logs = read_warmup_requests(self.export_dir)
        for log in logs:
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{WARMUP_FILE}: only predict_log records are replayed by the "
                                 f"contract double, got {log.WhichOneof('log_type')}.")
            self.predict_proto(log.predict_log.request)
        return len(logs)


class ServedModel:
    """A model name, its base path and version policy, and the versions loaded from it."""

    def __init__(self, model_config, max_batch_size=None):
        self.name = model_config.name
        self.base_path = model_config.base_path
        self.policy = (model_config.model_version_policy
                       if model_config.HasField("model_version_policy") else None)
        self.labels = dict(model_config.version_labels)
        self.max_batch_size = max_batch_size
        self._versions = {}
        self._failed = set()
        self._lock = threading.Lock()

    def refresh(self):
        """Loads the versions the policy now asks for and unloads the others."""
        wanted = versions_to_serve(self.base_path, self.policy)
        for version in wanted:
            if version in self._versions or version in self._failed:
                continue
            export_dir = os.path.join(self.base_path, str(version))
            try:
                servable = Servable(self.name, version, export_dir, self.max_batch_size)
                replayed = servable.warm_up()
            except Exception as error:  # a broken version must not stop the others
                logging.error("Model %s version %d failed to load: %s", self.name, version, error)
                self._failed.add(version)
                continue
            with self._lock:
                self._versions[version] = servable
            logging.info("Model %s version %d loaded from %s (%d warmup requests replayed).",
                         self.name, version, export_dir, replayed)
        with self._lock:
            for version in set(self._versions) - set(wanted):
                del self._versions[version]
                logging.info("Model %s version %d unloaded.", self.name, version)

    def loaded_versions(self) -> list:
        with self._lock:
            return sorted(self._versions)

    def servable(self, version=None, label=None) -> Servable:
        """The requested version (latest when neither version nor label is given)."""
        if label:
            if label not in self.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        with self._lock:
            if version is None and self._versions:
                return self._versions[max(self._versions)]
            if version in self._versions:
                return self._versions[version]
        request = f"Latest({self.name})" if version is None else f"Specific({self.name}, {version})"
        raise not_found(f"Servable not found for request: {request}")

    def status(self, version=None) -> get_model_status_pb2.GetModelStatusResponse:
        versions = self.loaded_versions()[::-1]
        if version is not None:
            if version not in versions:
                raise not_found(f"Could not find version {version} of model {self.name}")
            versions = [version]
        if not versions:
            raise not_found(f"Could not find any versions of model {self.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in versions:
            status = response.model_version_status.add(
                version=number, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            status.status.SetInParent()  # OK, printed as TF Serving prints it
        return response
