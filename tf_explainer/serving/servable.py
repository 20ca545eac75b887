"""Loaded SavedModel versions and the models that hold them, for the contract double.

A `Servable` is one version folder: its SignatureDefs (read from saved_model.pb, exactly what TF
Serving reports as metadata), its callable signatures, and request handling that validates
before running. A `ServedModel` keeps the versions its policy asks for, loads new ones (warming
them up with assets.extra/tf_serving_warmup_requests, as TF Serving does) and drops old ones,
with TF Serving's availability-preserving rule: a version that fails to load (a folder still
being copied, a corrupt file) never takes down the version that serves. A failed version is
tried again, with a growing delay, each time its folder has changed since the last try, and
serves as soon as it loads; its state and error are in the model status, as TF Serving reports.
"""

import dataclasses
import os
import threading
import time
from typing import Optional

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from tf_explainer.serving import codec
from tf_explainer.serving.config import versions_to_serve
from tf_explainer.serving.errors import (ServingError, failed_precondition, invalid_argument,
                                         not_found)
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE
from tf_explainer.serving.signature import Signature
from tf_explainer.serving.warmup import WARMUP_FILE, read_warmup_requests

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_State = get_model_status_pb2.ModelVersionStatus.State
# A failed version is tried again once its folder changes, but not sooner than this after the
# last try; the delay doubles with each consecutive failure (a large copy is not reloaded on
# every poll) up to the maximum.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


def read_signature_defs(export_dir) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefMap of a SavedModel's (single) MetaGraph."""
    path = os.path.join(export_dir, "saved_model.pb")
    with open(path, "rb") as f:
        data = f.read()
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(data)
    except DecodeError as error:
        raise ServingError(f"Could not parse {path} ({len(data)} bytes) as a SavedModel: {error}",
                           grpc.StatusCode.DATA_LOSS) from None
    if not saved_model.meta_graphs:
        raise ServingError(f"{path} ({len(data)} bytes) holds no MetaGraph.",
                           grpc.StatusCode.DATA_LOSS)
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
        if name not in self.signatures:  # FAILED_PRECONDITION, as TF Serving answers
            raise failed_precondition(f"Serving signature name: \"{name}\" not found in "
                                      f"signature def; this model has: {sorted(self.signatures)}.")
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
            response.outputs[key].CopyFrom(codec.typed_tensor_proto(value))
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


def folder_fingerprint(path) -> tuple:
    """(relative path, size, mtime, ctime) of every file under `path`, sorted: it changes when a
    copy adds, grows or rewrites a file (ctime as well, since copies may keep the source's
    mtime)."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except OSError:  # removed while walking: the next poll sees the change
                continue
            entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns,
                            stat.st_ctime_ns))
    return tuple(sorted(entries))


def load_error(error) -> ServingError:
    """Why a version failed to load, as the status code and message the model status reports."""
    if isinstance(error, ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        return ServingError(_op_error_text(error),
                            _STATUS_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN))
    if isinstance(error, FileNotFoundError):  # TF adds a hint about devices that misleads here
        return ServingError(str(error).splitlines()[0], grpc.StatusCode.NOT_FOUND)
    return ServingError(f"{type(error).__name__}: {error}", grpc.StatusCode.UNKNOWN)


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """What the model status reports for one version, and when a failed one may be tried again.

    state: a ModelVersionStatus.State (LOADING, AVAILABLE, END); error: why the last load failed
    (None: it did not, or the version was unloaded by the policy); folder: the folder's
    fingerprint when that load began; failures: consecutive failed loads; retry_at:
    time.monotonic() before which a failed version is not tried again."""
    state: int
    error: Optional[ServingError] = None
    folder: tuple = ()
    failures: int = 0
    retry_at: float = 0.0


class ServedModel:
    """A model name, its base path and version policy, and the versions loaded from it."""

    def __init__(self, model_config, max_batch_size=None):
        self.name = model_config.name
        self.base_path = model_config.base_path
        self.policy = (model_config.model_version_policy
                       if model_config.HasField("model_version_policy") else None)
        self.labels = dict(model_config.version_labels)
        self.max_batch_size = max_batch_size
        self._versions = {}  # version -> loaded Servable
        self._records = {}  # version -> VersionRecord of every version tried so far
        self._lock = threading.Lock()

    def refresh(self):
        """One poll of the base path: loads the versions the policy asks for (newest first, as
        TF Serving does), then unloads the ones it no longer asks for (see _unload_unwanted)."""
        wanted = versions_to_serve(self.base_path, self.policy)
        for version in sorted(wanted, reverse=True):
            if self._should_load(version):
                self._load(version)
        self._unload_unwanted(wanted)

    def _export_dir(self, version):
        return os.path.join(self.base_path, str(version))

    def _should_load(self, version) -> bool:
        """Not loaded, and either never tried, unloaded earlier, or failed and changed since."""
        with self._lock:
            if version in self._versions:
                return False
            record = self._records.get(version)
        if record is None or record.error is None:
            return True
        return (time.monotonic() >= record.retry_at
                and folder_fingerprint(self._export_dir(version)) != record.folder)

    def _load(self, version):
        export_dir = self._export_dir(version)
        folder = folder_fingerprint(export_dir)  # before loading: a change during the load counts
        with self._lock:
            failures = getattr(self._records.get(version), "failures", 0)
            self._records[version] = VersionRecord(_State.LOADING, folder=folder,
                                                   failures=failures)
        try:
            servable = Servable(self.name, version, export_dir, self.max_batch_size)
            replayed = servable.warm_up()
        except Exception as error:  # a broken version must not stop the others
            failures += 1
            delay = min(FIRST_RETRY_SECONDS * 2 ** (failures - 1), MAX_RETRY_SECONDS)
            status = load_error(error)
            with self._lock:
                self._records[version] = VersionRecord(
                    _State.END, status, folder, failures, time.monotonic() + delay)
            logging.error("Model %s version %d failed to load (%s: %s); serving %s. It is tried "
                          "again when its folder changes, in %.0f s at the earliest.", self.name,
                          version, status.code.name, status.message,
                          self.loaded_versions() or "nothing", delay)
            return
        with self._lock:
            self._versions[version] = servable
            self._records[version] = VersionRecord(_State.AVAILABLE)
        logging.info("Model %s version %d loaded from %s (%d warmup requests replayed).",
                     self.name, version, export_dir, replayed)

    def _unload_unwanted(self, wanted):
        """TF Serving's availability-preserving policy: versions the policy no longer asks for
        are unloaded once a wanted version serves, or when no version is wanted at all; while
        every wanted version is still loading or failing, the newest loaded one keeps serving."""
        with self._lock:
            unwanted = sorted(version for version in self._versions if version not in wanted)
            if wanted and not any(version in self._versions for version in wanted):
                unwanted = unwanted[:-1]
            for version in unwanted:
                del self._versions[version]
                self._records[version] = VersionRecord(_State.END)
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
        """Every version tried so far, newest first: AVAILABLE, LOADING, or END (unloaded, or
        failed with the load's error code and message), as TF Serving's GetModelStatus."""
        with self._lock:
            records = dict(self._records)
        if version is not None:
            if version not in records:
                raise not_found(f"Could not find version {version} of model {self.name}")
            records = {version: records[version]}
        if not records:
            raise not_found(f"Could not find any versions of model {self.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in sorted(records, reverse=True):
            record = records[number]
            status = response.model_version_status.add(version=number, state=record.state)
            status.status.SetInParent()  # OK, printed as TF Serving prints it
            if record.error is not None:
                status.status.error_code = record.error.code.value[0]
                status.status.error_message = record.error.message
        return response
