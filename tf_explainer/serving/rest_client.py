"""A client for TensorFlow Serving's REST API (the real server or the contract double).

  client = RestClient("http://localhost:8501", "explainer")
  outputs = client.predict({"image": uint8_batch})                       # row form
  outputs = client.predict({"image_bytes": [png_bytes]}, "image_bytes", form="columnar")

Outputs come back as numpy arrays with the signature's dtypes: JSON carries only numbers, so the
client reads the signature defs once from /metadata to restore them (and to name the output of
a single-output signature, which the row form leaves unnamed).
"""

import orjson
import requests
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from tf_explainer.serving import codec
from tf_explainer.serving.errors import ServingError, code_of_http_status
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE
from tf_explainer.serving.signature import Signature

_JSON = {"Content-Type": "application/json"}


class RestClient:
    """REST calls on one model; version None serves the latest. timeout in seconds."""

    def __init__(self, base_url, model_name, version=None, timeout=60.0):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._session = requests.Session()
        self._signature_defs = None

    @property
    def model_url(self):
        url = f"{self.base_url}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{int(self.version)}"

    def _call(self, method, url, body=None) -> bytes:
        try:
            response = self._session.request(method, url, data=body, timeout=self.timeout,
                                             headers=_JSON if body is not None else None)
        except requests.RequestException as error:
            raise ServingError(f"Cannot reach {url}: {error}", code_of_http_status(503),
                               http_status=503) from None
        if response.status_code != 200:
            raise ServingError(codec.parse_error(response.content),
                               code_of_http_status(response.status_code),
                               http_status=response.status_code)
        return response.content

    def status(self) -> dict:
        """GET /v1/models/NAME[/versions/N]: {"model_version_status": [...]}."""
        return orjson.loads(self._call("GET", self.model_url))

    def metadata(self) -> dict:
        """GET .../metadata: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        return orjson.loads(self._call("GET", f"{self.model_url}/metadata"))

    def served_version(self) -> int:
        """The version the server answers with (the latest unless one was asked for)."""
        return int(self.metadata()["model_spec"]["version"])

    def signature_defs(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The model's SignatureDefMap, parsed from the metadata into the real proto."""
        return json_format.ParseDict(self.metadata()["metadata"]["signature_def"],
                                     get_model_metadata_pb2.SignatureDefMap())

    def signature(self, name) -> Signature:
        """A signature's inputs and outputs, from the metadata (read once)."""
        if self._signature_defs is None:
            self._signature_defs = self.signature_defs().signature_def
        if name not in self._signature_defs:
            raise ServingError(f"Model {self.model_name!r} has no signature {name!r}; it has "
                               f"{sorted(self._signature_defs)}.")
        return Signature.from_proto(name, self._signature_defs[name])

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE, form="row") -> dict:
        """POST :predict; inputs {name: array}, strings as bytes (sent as {"b64": ...})."""
        outputs = self.signature(signature_name).outputs
        body = codec.predict_request_body(inputs, signature_name, form)
        content = self._call("POST", f"{self.model_url}:predict", body)
        return codec.parse_predict_response(
            content, {key: info.numpy_dtype for key, info in outputs.items()})

    def close(self):
        self._session.close()
