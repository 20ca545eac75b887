"""The contract double's wire format against what TensorFlow Serving sends, checked with raw
`requests` calls and the tensorflow_serving.apis stubs (not the project's clients), as a user
writing a client from TF Serving's documentation would see it."""

import os
import shutil
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_service_pb2_grpc

from tf_explainer.export import EXPLANATION_OUTPUTS
from tf_explainer.serving.config import single_model_config
from tf_explainer.serving.errors import code_of_http_status, http_status_of
from tf_explainer.serving.server import LISTEN_BACKLOG, ModelServer

sys.path.insert(0, os.path.dirname(__file__))
from test_serving import MODEL, raw_model_status, tiny_export  # noqa: E402


@pytest.fixture(scope="module")
def export_dir():
    return tiny_export(0)


@pytest.fixture(scope="module")
def server(export_dir):
    with ModelServer(single_model_config(MODEL, os.path.dirname(export_dir)),
                     poll_seconds=0) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _images(batch=2):
    return np.random.default_rng(0).integers(0, 256, (batch, 24, 20, 3), dtype=np.uint8)


def _request(images, signature="serving_default", output_filter=()):
    """A PredictRequest written the way TF Serving's tutorials write it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    request.output_filter.extend(output_filter)
    return request


def _url(server, path):
    return server.rest_url + path


def test_grpc_outputs_fill_the_typed_fields(server, stub, export_dir):
    images = _images()
    response = stub.Predict(_request(images), timeout=60)
    expected = tf.saved_model.load(export_dir).signatures["serving_default"](
        image=tf.constant(images))
    assert set(response.outputs) == set(EXPLANATION_OUTPUTS)
    for name, tensor in response.outputs.items():
        assert not tensor.tensor_content, name  # TF Serving fills float_val, int64_val, ...
        want = expected[name].numpy()
        assert [dim.size for dim in tensor.tensor_shape.dim] == list(want.shape), name
        values = tensor.int64_val if want.dtype == np.int64 else tensor.float_val
        np.testing.assert_allclose(np.array(values), want.ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert tf.as_dtype(response.outputs["classes"].dtype) == tf.int64
    assert tf.as_dtype(response.outputs["part_maps"].dtype) == tf.float32


def test_grpc_output_filter_refuses_repeats_and_unknown_names(stub):
    filtered = stub.Predict(_request(_images(), output_filter=["classes", "p"]), timeout=60)
    assert set(filtered.outputs) == {"classes", "p"}
    for output_filter, phrase in ((["classes", "p", "classes"],
                                   "duplicate output tensor name: classes in output_filter"),
                                  (["classes", "logits"], "logits")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(_request(_images(), output_filter=output_filter), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert phrase in caught.value.details()


def test_unknown_signature_is_a_failed_precondition(server, stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_request(_images(), "explain_all"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert '"explain_all" not found in signature def' in caught.value.details()
    response = requests.post(_url(server, f"/v1/models/{MODEL}:predict"), timeout=60,
                             json={"signature_name": "explain_all",
                                   "instances": _images(1).tolist()})
    assert response.status_code == 400  # FAILED_PRECONDITION is 400 in TF Serving's mapping
    assert '"explain_all" not found' in response.json()["error"]


@pytest.mark.parametrize("signature_name, status", [(None, 400), (7, 400), ("", 200),
                                                    ("classify", 200)])
def test_signature_name_must_be_a_string(server, signature_name, status):
    response = requests.post(_url(server, f"/v1/models/{MODEL}:predict"), timeout=60,
                             json={"signature_name": signature_name,
                                   "instances": _images(1).tolist()})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json() == {"error": "'signature_name' key must be a string value."}


@pytest.mark.parametrize("method, path, status, phrase", [
    ("PUT", f"/v1/models/{MODEL}", 400, f"Malformed request: PUT /v1/models/{MODEL}"),
    ("DELETE", f"/v1/models/{MODEL}", 400, f"Malformed request: DELETE /v1/models/{MODEL}"),
    ("PATCH", f"/v1/models/{MODEL}:predict", 400, "Malformed request: PATCH"),
    ("GET", f"/v1/models/{MODEL}:predict", 400, "Malformed request: GET"),
    ("POST", f"/v1/models/{MODEL}/metadata", 400, "Malformed request: POST"),
    ("GET", "/", 404, "Not found: GET /"),
    ("GET", f"/v2/models/{MODEL}", 404, "Not found"),
    ("POST", f"/v2/models/{MODEL}:predict", 404, "Not found"),
    ("BREW", f"/v1/models/{MODEL}", 501, "Unsupported method"),
])
def test_every_method_and_path_gets_a_json_answer(server, method, path, status, phrase):
    response = requests.request(method, _url(server, path), data=b"{}", timeout=60)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert phrase in response.json()["error"]


def test_head_gets_headers_only(server):
    response = requests.head(_url(server, f"/v1/models/{MODEL}"), timeout=60)
    assert response.status_code == 400 and response.content == b""
    # The keep-alive connection stays in step: the next call on a session still works.
    with requests.Session() as session:
        assert session.head(_url(server, f"/v1/models/{MODEL}"), timeout=60).status_code == 400
        assert session.get(_url(server, f"/v1/models/{MODEL}"), timeout=60).status_code == 200


def test_status_codes_map_to_http_as_tf_serving_maps_them():
    expected = {grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.ABORTED: 409,
                grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAVAILABLE: 503,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DATA_LOSS: 500}
    assert {code: http_status_of(code) for code in expected} == expected
    assert code_of_http_status(499) == grpc.StatusCode.CANCELLED
    assert code_of_http_status(409) == grpc.StatusCode.ABORTED


def test_model_status_over_grpc_matches_rest(server):
    (version,) = raw_model_status(server.grpc_target, timeout=60).model_version_status
    assert version.version == 1
    assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert requests.get(_url(server, f"/v1/models/{MODEL}"), timeout=60).json() == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` to read the listen backlog")
def test_rest_listen_backlog_takes_a_burst_of_connections(server):
    """A burst of fresh connections must not overflow the accept queue: Linux drops the SYNs
    beyond it and the clients wait a second to retry. `ss` shows a listening socket's backlog
    in its Send-Q column."""
    lines = subprocess.run(["ss", "-ltnH", f"sport = :{server.rest_port}"], capture_output=True,
                           text=True, timeout=30, check=True).stdout.split()
    assert int(lines[2]) >= LISTEN_BACKLOG >= 128
    # And the burst itself: 64 connections opened at once all get their answer.
    sockets = [socket.create_connection((server.host, server.rest_port), timeout=30)
               for _ in range(64)]
    try:
        for sock in sockets:
            sock.sendall(f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n".encode())
        for sock in sockets:
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()
