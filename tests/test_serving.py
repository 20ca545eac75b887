"""Both clients against the contract double serving real exports of the tiny explainer.

The same client checks (check_client_contract) run against a real TensorFlow Serving when
TF_SERVING_URL (REST base URL) is set, with TF_SERVING_GRPC (host:port) for gRPC and
TF_SERVING_MODEL (default "explainer") for the model name.
"""

import atexit
import functools
import io
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc)

from tf_explainer.build import build_explainer
from tf_explainer.export import EXPLANATION_OUTPUTS, export_explainer
from tf_explainer.serving import GrpcClient, RestClient, ServingError, codec
from tf_explainer.serving.config import single_model_config
from tf_explainer.serving.protocol import GRPC_OPTIONS
from tf_explainer.serving.servable import read_signature_defs
from tf_explainer.serving.server import ModelServer
from tf_explainer.serving.warmup import read_warmup_requests

sys.path.insert(0, os.path.dirname(__file__))
from tiny import tiny_performer  # noqa: E402

MODEL = "explainer"
MAX_BATCH = 8
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def raw_model_status(grpc_target, timeout=30):
    """GetModelStatus of MODEL through TF Serving's own stub (not our client): what any gRPC user
    of the server sees."""
    with grpc.insecure_channel(grpc_target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request,
                                                                               timeout=timeout)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(batch=3, seed=0, size=(40, 52)):
    return np.random.default_rng(seed).integers(0, 256, (batch, *size, 3), dtype=np.uint8)


def _assert_outputs_close(actual, expected):
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], err_msg=key, **TOLERANCE)


def check_client_contract(rest, grpc_client, images):
    """What the double and a real TF Serving must both answer for an exported explainer."""
    row = rest.predict({"image": images})
    assert set(row) == set(EXPLANATION_OUTPUTS)
    _assert_outputs_close(rest.predict({"image": images}, form="columnar"), row)
    batch, height, width = images.shape[:3]
    np.testing.assert_allclose(row["probabilities"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(row["classes"], row["probabilities"].argmax(-1))
    assert row["classes"].dtype == np.int64 and row["part_maps"].dtype == np.float32
    np.testing.assert_allclose(row["part_scores"], row["part_maps"].max(axis=(1, 2)), rtol=1e-6)
    peaks = row["part_peaks"]
    assert peaks.shape == (batch, row["part_maps"].shape[-1], 2)
    assert (peaks >= -0.5).all() and (peaks <= np.array([height, width])).all()
    classify = rest.predict({"image": images}, "classify")
    np.testing.assert_allclose(classify["probabilities"], row["probabilities"], atol=1e-5)
    from_png = rest.predict({"image_bytes": [_png(image) for image in images]}, "image_bytes")
    _assert_outputs_close(from_png, row)  # PNG is lossless: the same pixels, the same answer
    with pytest.raises(ServingError) as caught:
        rest.predict({"image": images.astype(np.float32) + 0.5})
    assert caught.value.http_status == 400 and "uint8" in caught.value.message
    if grpc_client is None:
        return row
    _assert_outputs_close(grpc_client.predict({"image": images}), row)
    filtered = grpc_client.predict({"image": images}, output_filter=["classes", "part_peaks"])
    _assert_outputs_close(filtered, {key: row[key] for key in ("classes", "part_peaks")})
    assert grpc_client.get_model_metadata() == rest.signature_defs()
    with pytest.raises(ServingError) as caught:
        grpc_client.predict({"image": images.astype(np.float32)})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return row


@functools.lru_cache(maxsize=None)
def tiny_export(seed) -> str:
    """The tiny explainer over tiny_performer(seed), exported once per test run: the serving
    test modules share it (read it, or copy it where they change folders) instead of each
    paying for an export. Returns the version folder, `<base>/explainer/1`."""
    base = tempfile.mkdtemp(prefix="tiny-export-")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    performer = tiny_performer(seed=seed)
    return export_explainer(build_explainer(performer), performer, base, MODEL)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    """Versions 1 and 2 (different performer weights) of the tiny explainer."""
    base = tmp_path_factory.mktemp("models") / MODEL
    for version, seed in ((1, 0), (2, 1)):
        shutil.copytree(tiny_export(seed), base / str(version))
    return str(base)


@pytest.fixture(scope="module")
def direct(base_path):
    """The loaded SavedModels, called without any server."""
    return {version: tf.saved_model.load(os.path.join(base_path, str(version)))
            for version in (1, 2)}


def _call(model, signature, **inputs):
    return {key: value.numpy() for key, value in model.signatures[signature](**inputs).items()}


@pytest.fixture(scope="module")
def server(base_path):
    config = single_model_config(MODEL, base_path)
    config.model_config_list.config[0].model_version_policy.all.SetInParent()
    config.model_config_list.config[0].version_labels["stable"] = 1
    with ModelServer(config, {"max_batch_size": MAX_BATCH}, poll_seconds=0) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server):
    client = RestClient(server.rest_url, MODEL)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = GrpcClient(server.grpc_target, MODEL)
    yield client
    client.close()


def test_clients_against_the_double_equal_a_direct_call(rest, grpc_client, direct):
    images = _images()
    row = check_client_contract(rest, grpc_client, images)
    _assert_outputs_close(row, _call(direct[2], "serving_default", image=images))
    classify = grpc_client.predict({"image": images}, "classify")
    _assert_outputs_close(classify, _call(direct[2], "classify", image=images))


def test_image_bytes_accepts_jpeg_and_png_of_any_size(rest, grpc_client, direct):
    files = [tf.io.encode_jpeg(_images(1, seed=1, size=(30, 45))[0]).numpy(),
             _png(_images(1, seed=2, size=(64, 33))[0])]
    expected = _call(direct[2], "image_bytes", image_bytes=tf.constant(files))
    _assert_outputs_close(rest.predict({"image_bytes": files}, "image_bytes"), expected)
    _assert_outputs_close(grpc_client.predict({"image_bytes": files}, "image_bytes"), expected)
    peaks = expected["part_peaks"]
    assert peaks[0, :, 0].max() <= 30 and peaks[1, :, 0].max() <= 64  # each in its own pixels


def test_versions_status_and_metadata(server, base_path, direct):
    images = _images(2, seed=3)
    outputs = {}
    for version in (1, 2):
        outputs[version] = RestClient(server.rest_url, MODEL, version).predict({"image": images})
        _assert_outputs_close(outputs[version],
                              _call(direct[version], "serving_default", image=images))
        assert GrpcClient(server.grpc_target, MODEL, version).served_version() == version
    assert not np.allclose(outputs[1]["probabilities"], outputs[2]["probabilities"])
    labelled = _rest_post(server, codec.predict_request_body({"image": images}, form="columnar"),
                          f"/v1/models/{MODEL}/labels/stable:predict")
    np.testing.assert_allclose(labelled.json()["outputs"]["probabilities"],
                               outputs[1]["probabilities"], **TOLERANCE)
    unknown = _rest_post(server, b"{}", f"/v1/models/{MODEL}/labels/beta:predict")
    assert unknown.status_code == 400 and "version label: beta" in unknown.json()["error"]
    rest = RestClient(server.rest_url, MODEL)
    ok = {"error_code": "OK", "error_message": ""}
    assert rest.status() == {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": ok} for v in (2, 1)]}
    assert [s.version for s in GrpcClient(server.grpc_target, MODEL).get_model_status()
            .model_version_status] == [2, 1]
    metadata = rest.metadata()
    assert metadata["model_spec"] == {"name": MODEL, "version": "2", "signature_name": ""}
    image_input = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"][
        "inputs"]["image"]
    assert image_input["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image_input["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert rest.signature_defs() == read_signature_defs(os.path.join(base_path, "2"))


@pytest.mark.parametrize("version, model, message", [
    (7, MODEL, "Specific(explainer, 7)"), (None, "nope", "Latest(nope)")])
def test_unknown_model_or_version_is_not_found(server, version, model, message):
    with pytest.raises(ServingError, match=re.escape(message)) as caught:
        RestClient(server.rest_url, model, version).predict({"image": _images(1)})
    assert caught.value.http_status == 404
    with pytest.raises(ServingError, match=re.escape(message)) as caught:
        GrpcClient(server.grpc_target, model, version).predict({"image": _images(1)})
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_warmup_requests_replay_through_the_double(server, base_path, direct):
    logs = read_warmup_requests(os.path.join(base_path, "2"))
    assert {log.predict_log.request.model_spec.signature_name for log in logs} >= {
        "serving_default", "classify"}
    with grpc.insecure_channel(server.grpc_target, options=GRPC_OPTIONS) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for log in logs:
            assert isinstance(log, prediction_log_pb2.PredictionLog)
            request = log.predict_log.request
            response = stub.Predict(request, timeout=60)
            assert response.model_spec.version.value == 2
            inputs = {key: tf.constant(codec.ndarray(value)) for key, value in
                      request.inputs.items()}
            expected = _call(direct[2], request.model_spec.signature_name, **inputs)
            _assert_outputs_close({k: codec.ndarray(v) for k, v in response.outputs.items()},
                                  expected)


def _rest_post(server, body, path=f"/v1/models/{MODEL}:predict"):
    return requests.post(server.rest_url + path, data=body, timeout=60)


def _grpc_request(inputs, signature="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Each kind of bad request: (REST body, gRPC request, a phrase the message must contain, the
# gRPC code; all of them are HTTP 400).
BAD_REQUESTS = {
    "wrong_shape": (codec.predict_request_body({"image": _images(2)[..., :2]}),
                    _grpc_request({"image": _images(2)[:, 0]}), "must have shape", INVALID),
    "wrong_dtype": (codec.predict_request_body({"image": _images(2) / 2}),
                    _grpc_request({"image": _images(2).astype(np.int32)}), "uint8", INVALID),
    "undecodable_bytes": (codec.predict_request_body({"image_bytes": [b"\x89PNG not really"]},
                                                     "image_bytes"),
                          _grpc_request({"image_bytes": np.array([b"\xff\xd8\xff?"],
                                                                 dtype=object)},
                                        "image_bytes"), "Signature 'image_bytes' failed",
                          INVALID),
    "malformed_json": (b'{"instances": [[1, 2, 3]', None, "Malformed JSON", INVALID),
    "unknown_signature": (codec.predict_request_body({"image": _images(1)}, "explain_all"),
                          _grpc_request({"image": _images(1)}, "explain_all"),
                          "\"explain_all\" not found in signature def",
                          grpc.StatusCode.FAILED_PRECONDITION),
    "oversize_batch": (codec.predict_request_body({"image": _images(MAX_BATCH + 1)}),
                       _grpc_request({"image": _images(MAX_BATCH + 1)}),
                       f"larger than maximum input batch size {MAX_BATCH}", INVALID),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_clear_error(server, kind):
    body, request, phrase, code = BAD_REQUESTS[kind]
    response = _rest_post(server, body)
    assert response.status_code == 400
    assert phrase in response.json()["error"]
    if request is None:
        return
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                               timeout=60)
    assert caught.value.code() == code
    assert phrase in caught.value.details()


def test_a_thousand_bad_requests_leave_the_server_correct(server, rest, grpc_client, direct):
    rng = random.Random(0)
    kinds = sorted(BAD_REQUESTS)
    threads_before = threading.active_count()
    failures = {"rest": 0, "grpc": 0}
    with grpc.insecure_channel(server.grpc_target, options=GRPC_OPTIONS) as channel, \
            requests.Session() as session:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(1000):
            body, request, _, code = BAD_REQUESTS[rng.choice(kinds)]
            if request is None or rng.random() < 0.5:
                response = session.post(f"{server.rest_url}/v1/models/{MODEL}:predict",
                                        data=body, timeout=60)
                failures["rest"] += response.status_code == 400
            else:
                try:
                    stub.Predict(request, timeout=60)
                except grpc.RpcError as error:
                    failures["grpc"] += error.code() == code
    assert sum(failures.values()) == 1000 and min(failures.values()) > 300
    assert threading.active_count() <= threads_before + 2  # no handler threads left behind
    images = _images(2, seed=4)
    expected = _call(direct[2], "serving_default", image=images)
    _assert_outputs_close(rest.predict({"image": images}), expected)
    _assert_outputs_close(grpc_client.predict({"image": images}), expected)


def test_concurrent_requests_each_get_their_own_answer(server, direct):
    images = [_images(1, seed=10 + i) for i in range(6)]
    expected = [_call(direct[2], "classify", image=image) for image in images]
    results = [None] * len(images)

    def ask(i):
        client = RestClient(server.rest_url, MODEL) if i % 2 else GrpcClient(
            server.grpc_target, MODEL)
        results[i] = [client.predict({"image": images[i]}, "classify") for _ in range(3)]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answers, want in zip(results, expected):
        for answer in answers:
            _assert_outputs_close(answer, want)


def test_rest_paths_and_status_codes(server):
    assert _rest_post(server, b"{}", f"/v1/models/{MODEL}:classify").status_code == 501
    assert requests.get(f"{server.rest_url}/v1/models", timeout=60).status_code == 400
    response = requests.get(f"{server.rest_url}/v1/models/{MODEL}/versions/9/metadata",
                            timeout=60)
    assert response.status_code == 404 and "Specific(explainer, 9)" in response.json()["error"]
    response = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", timeout=60,
                             data=iter([b'{"instances": [1]}']))  # chunked: no Content-Length
    assert response.status_code == 411


def test_new_versions_are_picked_up_and_old_ones_unloaded(base_path, tmp_path):
    model_path = str(tmp_path / MODEL)
    shutil.copytree(os.path.join(base_path, "1"), os.path.join(model_path, "1"))
    with ModelServer(single_model_config(MODEL, model_path), poll_seconds=0.2) as server:
        client = GrpcClient(server.grpc_target, MODEL)
        assert client.served_version() == 1
        staging = os.path.join(model_path, ".2.tmp")
        shutil.copytree(os.path.join(base_path, "2"), staging)
        os.rename(staging, os.path.join(model_path, "2"))  # as export_explainer publishes
        deadline = time.monotonic() + 30
        while client.served_version() != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.served_version() == 2
        with pytest.raises(ServingError, match=r"Specific\(explainer, 1\)"):
            GrpcClient(server.grpc_target, MODEL, 1).predict({"image": _images(1)})


@pytest.mark.skipif(not os.environ.get("TF_SERVING_URL"),
                    reason="set TF_SERVING_URL (and TF_SERVING_GRPC) to test a real TF Serving")
def test_clients_against_a_real_tf_serving():
    model = os.environ.get("TF_SERVING_MODEL", MODEL)
    rest = RestClient(os.environ["TF_SERVING_URL"], model)
    target = os.environ.get("TF_SERVING_GRPC")
    assert {"serving_default", "classify", "image_bytes"} <= set(
        rest.signature_defs().signature_def)
    check_client_contract(rest, GrpcClient(target, model) if target else None, _images())
