"""The contract double: a DEVELOPMENT STAND-IN for TensorFlow Serving, not a production server.

The tensorflow_model_server binary cannot be installed on the development machines, so this
small server implements the part of its contract that the clients and tools use, over the same
exported SavedModel, on 127.0.0.1:

  REST  GET  /v1/models/NAME[/versions/N | /labels/L]             model status
        GET  /v1/models/NAME[/versions/N | /labels/L]/metadata    signature defs
        POST /v1/models/NAME[/versions/N | /labels/L]:predict     row or columnar JSON
  gRPC  tensorflow.serving.PredictionService  Predict (output_filter), GetModelMetadata
        tensorflow.serving.ModelService       GetModelStatus

Requests are validated against the signature (names, dtypes, shapes, batch size) before the
model runs; every failure is an HTTP status with {"error": message} or a gRPC status with
details, mapped as TF Serving maps them (bad input 400 / INVALID_ARGUMENT, unknown signature
400 / FAILED_PRECONDITION, unknown model or version 404 / NOT_FOUND, paths outside /v1/ 404).
gRPC outputs fill the TensorProto's typed fields (float_val, int64_val, ...), as TF Serving's
do. Versions are polled on disk, warmed up with the version's warmup requests, and replaced
without ever dropping the serving one for a version that fails to load (servable.ServedModel).
REST bodies over max_request_body_bytes are refused with 413 before they are read into memory.
What it does not do (request batching, :classify/:regress, other platforms, ...) is listed in
serving/README.md.
"""

import http.server
import re
import threading
from concurrent import futures

import grpc
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, model_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from tf_explainer.serving import codec
from tf_explainer.serving.errors import ServingError, invalid_argument, not_found
from tf_explainer.serving.protocol import (DEFAULT_MAX_REQUEST_BODY_BYTES, GRPC_OPTIONS,
                                           SIGNATURE_DEF_FIELD)
from tf_explainer.serving.servable import ServedModel

NOTICE = ("tf_explainer contract double: a DEVELOPMENT STAND-IN for TensorFlow Serving (same "
          "REST/gRPC API for the clients and tools; no request batching). Serve production "
          "traffic with the tensorflow/serving image (serving/README.md).")
_VERSION = r"(?:/versions/(\d+)|/labels/([^/:]+))?"
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION + r":(classify|regress|predict)",
                           re.IGNORECASE)
_MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION + r"(/metadata)?", re.IGNORECASE)
# TF Serving's HTTP server hands only these paths to its REST API; others are 404.
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
# The listen backlog of TF Serving's HTTP server (libevent's evhttp listens with 128). Python's
# default of 5 drops the SYNs of a burst of fresh connections: they wait a second to retry.
LISTEN_BACKLOG = 128
_DRAIN_CHUNK_BYTES = 1 << 20


def _json(message) -> dict:
    """A proto as TF Serving writes it in REST answers (proto field names, defaults shown)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def _spec_version(spec):
    """(version or None, label or None) of a gRPC ModelSpec."""
    return (spec.version.value if spec.HasField("version") else None), (spec.version_label or None)


class ModelServer:
    """Serves the models of a ModelServerConfig over REST and gRPC until stop().

    batching_parameters: {field: value} (config.read_batching_parameters); only max_batch_size
    is enforced. Ports 0 pick free ones; the chosen ones are in rest_port and grpc_port after
    start(). poll_seconds: how often base paths are scanned for new versions (0: only at start).
    max_request_body_bytes: larger REST bodies get 413 (gRPC keeps TF Serving's 2 GiB limit).
    """

    def __init__(self, model_server_config, batching_parameters=None, rest_port=0, grpc_port=0,
                 host="127.0.0.1", poll_seconds=1.0, grpc_workers=8,
                 max_request_body_bytes=DEFAULT_MAX_REQUEST_BODY_BYTES):
        max_batch_size = (batching_parameters or {}).get("max_batch_size")
        self.models = {}
        for model_config in model_server_config.model_config_list.config:
            if model_config.name in self.models:
                raise ValueError(f"Model {model_config.name!r} is configured twice.")
            self.models[model_config.name] = ServedModel(model_config, max_batch_size)
        self.host, self.rest_port, self.grpc_port = host, rest_port, grpc_port
        self.poll_seconds = poll_seconds
        self.max_request_body_bytes = int(max_request_body_bytes)
        self._grpc_workers = grpc_workers
        self._http = self._grpc = None
        self._stopping = threading.Event()
        self._threads = []

    # ---- life cycle ----------------------------------------------------------------------

    def start(self):
        logging.warning(NOTICE)
        for model in self.models.values():
            model.refresh()
            if not model.loaded_versions():
                logging.warning("No versions of servable %s found under base path %s; polling.",
                                model.name, model.base_path)
        self._http = _HttpServer((self.host, self.rest_port), _RestHandler)
        self._http.model_server = self
        self.rest_port = self._http.server_address[1]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self._grpc_workers),
                                 options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        self._grpc.start()
        self._threads = [threading.Thread(target=self._http.serve_forever, daemon=True)]
        if self.poll_seconds:
            self._threads.append(threading.Thread(target=self._poll, daemon=True))
        for thread in self._threads:
            thread.start()
        logging.info("REST on %s, gRPC on %s", self.rest_url, self.grpc_target)
        return self

    def stop(self):
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
        for thread in self._threads:
            thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def rest_url(self):
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self):
        return f"{self.host}:{self.grpc_port}"

    def _poll(self):
        while not self._stopping.wait(self.poll_seconds):
            for model in self.models.values():
                try:
                    model.refresh()
                except Exception:  # keep polling: a bad folder must not stop serving
                    logging.exception("Polling %s failed.", model.base_path)

    # ---- requests, shared by both protocols -----------------------------------------------

    def model(self, name) -> ServedModel:
        if name not in self.models:
            raise not_found(f"Servable not found for request: Latest({name})")
        return self.models[name]

    def servable(self, name, version=None, label=None):
        return self.model(name).servable(version, label)

    # ---- REST -------------------------------------------------------------------------------

    def rest_request(self, method, path, body) -> bytes:
        """The answer body to a REST call under /v1/; failures raise ServingError. As in TF
        Serving, anything but GET of a model path or POST of a predict path is malformed."""
        if method == "GET":
            return self.rest_get(path)
        if method == "POST":
            return self.rest_post(path, body)
        raise invalid_argument(f"Malformed request: {method} {path}")

    def rest_get(self, path) -> bytes:
        match = _MODEL_PATH.fullmatch(path)
        if not match:
            raise invalid_argument(f"Malformed request: GET {path}")
        name, version, label, metadata = match.groups()
        if not name:
            raise invalid_argument("Missing model name in request.")
        version = int(version) if version else None
        if metadata:
            servable = self.servable(name, version, label)
            spec = model_pb2.ModelSpec()
            servable.fill_model_spec(spec)
            return codec.dumps({"model_spec": _json(spec), "metadata": {
                SIGNATURE_DEF_FIELD: _json(servable.signature_defs)}})
        if label:
            version = self.servable(name, label=label).version
        return codec.dumps(_json(self.model(name).status(version)))

    def rest_post(self, path, body) -> bytes:
        match = _PREDICT_PATH.fullmatch(path)
        if not match:
            raise invalid_argument(f"Malformed request: POST {path}")
        name, version, label, method = match.groups()
        if method.lower() != "predict":
            raise ServingError(f":{method} is not implemented by the contract double; use "
                               ":predict.", grpc.StatusCode.UNIMPLEMENTED)
        servable = self.servable(name, int(version) if version else None, label)
        with codec.gc_paused():
            signature, form, arrays = _json_inputs(servable, body)
        return codec.predict_response_body(servable.predict(signature, arrays), form)

    # ---- gRPC -------------------------------------------------------------------------------

    def grpc_predict(self, request):
        return self.servable(request.model_spec.name,
                             *_spec_version(request.model_spec)).predict_proto(request)

    def grpc_metadata(self, request):
        fields = list(request.metadata_field)
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self.servable(request.model_spec.name, *_spec_version(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        servable.fill_model_spec(response.model_spec)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_defs)
        return response

    def grpc_status(self, request):
        version, label = _spec_version(request.model_spec)
        if label:
            version = self.servable(request.model_spec.name, label=label).version
        return self.model(request.model_spec.name).status(version)


def _json_inputs(servable, body):
    """(signature, form, numpy inputs) of a :predict body; the parsed JSON is freed on return."""
    signature_name, form, payload = codec.parse_predict_body(body)
    signature = servable.signature(signature_name)
    values = codec.named_inputs(form, payload, signature.inputs)
    signature.check_names(values)
    return signature, form, {key: codec.array_from_json(value, signature.inputs[key].numpy_dtype,
                                                        key) for key, value in values.items()}


def _grpc_answer(context, handler, request):
    """Runs a gRPC handler; failures become the status and details of the call."""
    try:
        return handler(request)
    except ServingError as error:
        context.abort(error.code, error.message)
    except Exception as error:  # never let one request take the server down
        logging.exception("gRPC request failed.")
        context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {error}")


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server):
        self._server = server

    def Predict(self, request, context):
        return _grpc_answer(context, self._server.grpc_predict, request)

    def GetModelMetadata(self, request, context):
        return _grpc_answer(context, self._server.grpc_metadata, request)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server):
        self._server = server

    def GetModelStatus(self, request, context):
        return _grpc_answer(context, self._server.grpc_status, request)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """Every method goes to ModelServer.rest_request (TF Serving answers unknown methods and
    paths under /v1/ with a JSON 400, others with 404); every error body is {"error": ...}."""
    protocol_version = "HTTP/1.1"  # keep-alive, as clients with a session expect
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms ACK stalls
    server_version = "tf-explainer-contract-double"

    def _dispatch(self):
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if not _API_PATH.fullmatch(path):
            self._send(404, codec.error_body(f"Not found: {self.command} {path} (TF Serving's "
                                             "REST API is under /v1/)."))
            return
        self._answer(self.server.model_server.rest_request, self.command, path, body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _dispatch

    def _content_length(self):
        """The declared body length, or None when there is none or it is not a number."""
        length = self.headers.get("Content-Length", "").strip()
        return int(length) if length.isdigit() else None

    def _too_large(self, length) -> bool:
        return length is not None and length > self.server.model_server.max_request_body_bytes

    def _refuse_too_large(self, length):
        self.close_connection = True
        limit = self.server.model_server.max_request_body_bytes
        self._send(413, codec.error_body(f"The request body ({length} bytes) is over the limit "
                                         f"of {limit} bytes (max_request_body_bytes)."))

    def handle_expect_100(self):
        """Refuses an oversized body before the client sends it (curl asks first for large
        bodies)."""
        length = self._content_length()
        if self._too_large(length):
            self._refuse_too_large(length)
            return False
        return super().handle_expect_100()

    def _read_body(self):
        """The request body (b"" when there is none), or None once an error has been sent.

        A body over the limit is read and dropped in small chunks, so the client sees the 413
        instead of a reset connection, without the server ever holding it."""
        if "Transfer-Encoding" in self.headers or (
                self.command == "POST" and self._content_length() is None):
            self.close_connection = True
            self._send(411, codec.error_body("A Content-Length header is required (chunked "
                                             "bodies are not read)."))
            return None
        length = self._content_length() or 0
        if not self._too_large(length):
            return self.rfile.read(length)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, _DRAIN_CHUNK_BYTES))
            if not chunk:
                break
            remaining -= len(chunk)
        self._refuse_too_large(length)
        return None

    def _answer(self, handler, *args):
        try:
            status, body = 200, handler(*args)
        except ServingError as error:
            status, body = error.http_status, codec.error_body(error.message)
        except Exception as error:  # never let one request take the server down
            logging.exception("REST request %s failed.", self.path)
            status, body = 500, codec.error_body(f"Internal error: {error}")
        self._send(status, body)

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, unsupported method, ...) as JSON too."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("Error",))[0]
        self._send(code, codec.error_body(f"{reason}{': ' + explain if explain else ''}"))

    def log_message(self, format, *args):
        logging.vlog(1, "REST %s", format % args)
