"""serving/ configuration files read with the real protos, version policies and the REST codec."""

import base64
import configparser
import gc
import os
import re

import grpc
import numpy as np
import orjson
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tf_explainer.serving import codec
from tf_explainer.serving.config import (available_versions, read_batching_parameters,
                                         read_model_server_config, versions_to_serve)
from tf_explainer.serving.errors import ServingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(ROOT, "serving")


def test_models_config_is_a_model_server_config():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "explainer", "/models/explainer", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    assert read_model_server_config(os.path.join(SERVING, "models.config")) == config


def test_model_config_errors_name_the_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { name: 'x' bogus: 1 } }")
    with pytest.raises(ValueError, match="models.config.*bogus"):
        read_model_server_config(str(path))
    path.write_text("model_config_list { config { name: 'x' base_path: '/m' "
                    "model_platform: 'pytorch' } }")
    with pytest.raises(ValueError, match="platform 'pytorch'"):
        read_model_server_config(str(path))


def test_batching_parameters_are_consistent():
    parameters = read_batching_parameters(os.path.join(SERVING, "batching_parameters.txt"))
    assert parameters["max_batch_size"] == 32
    assert parameters["allowed_batch_sizes"] == sorted(parameters["allowed_batch_sizes"])
    assert parameters["allowed_batch_sizes"][-1] == parameters["max_batch_size"]
    assert parameters["batch_timeout_micros"] >= 0 and parameters["num_batch_threads"] >= 1


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n", ":2: unknown batching"),
    ("max_batch_size = 8\n", ":1: expected"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n", "must equal max_batch_size"),
])
def test_batching_parameter_errors(tmp_path, text, message):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_batching_parameters(str(path))


def test_dockerfile_serves_the_configs_with_the_pinned_version():
    with open(os.path.join(SERVING, "Dockerfile")) as f:
        dockerfile = f.read()
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    pinned = re.search(r"tensorflow-serving-api==(\S+)", setup["options"]["install_requires"])
    assert f"ARG TF_SERVING_VERSION={pinned.group(1)}" in dockerfile
    assert "FROM tensorflow/serving:${TF_SERVING_VERSION}" in dockerfile
    for name in ("models.config", "batching_parameters.txt"):
        assert os.path.exists(os.path.join(SERVING, name))
        assert f"/config/{name}" in dockerfile
    assert "--enable_batching=true" in dockerfile and "EXPOSE 8500 8501" in dockerfile


def _policy(text):
    config = model_server_config_pb2.ModelConfig()
    text_format.Parse(f"model_version_policy {{ {text} }}", config)
    return config.model_version_policy


def test_versions_follow_the_policy(tmp_path):
    for name in ("1", "2", "10", "3"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    os.makedirs(tmp_path / "4")  # no SavedModel yet: not a version
    os.makedirs(tmp_path / ".5.tmp-1")  # an export in progress
    assert available_versions(str(tmp_path)) == [1, 2, 3, 10]
    assert versions_to_serve(str(tmp_path)) == [10]
    assert versions_to_serve(str(tmp_path), _policy("latest { num_versions: 2 }")) == [3, 10]
    assert versions_to_serve(str(tmp_path), _policy("all {}")) == [1, 2, 3, 10]
    assert versions_to_serve(str(tmp_path), _policy("specific { versions: 2 versions: 7 }")) == [2]
    assert versions_to_serve(str(tmp_path / "missing")) == []


def test_row_and_columnar_bodies_follow_tf_serving():
    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3)
    row = orjson.loads(codec.predict_request_body({"image": image}, "classify", "row"))
    assert row == {"signature_name": "classify",
                   "instances": [{"image": image[0].tolist()}, {"image": image[1].tolist()}]}
    columnar = orjson.loads(codec.predict_request_body({"image": image}, form="columnar"))
    assert columnar == {"signature_name": "serving_default", "inputs": {"image": image.tolist()}}
    for body in (row, columnar):
        _, form, payload = codec.parse_predict_body(orjson.dumps(body))
        values = codec.named_inputs(form, payload, {"image": None})
        np.testing.assert_array_equal(codec.array_from_json(values["image"], np.uint8, "image"),
                                      image)
    # A bare value per instance is the row form of a single-input signature.
    _, form, payload = codec.parse_predict_body(orjson.dumps({"instances": image.tolist()}))
    assert codec.named_inputs(form, payload, {"image": None})["image"] == image.tolist()


def test_responses_name_outputs_and_base64_only_bytes_outputs():
    outputs = {"classes": np.array([2, 0], np.int64),
               "label_bytes": np.array([b"\x00a\x00", b"b\x00"], dtype=object)}
    row = orjson.loads(codec.predict_response_body(outputs, "row"))
    encoded = base64.b64encode(b"\x00a\x00").decode()
    assert row["predictions"][0] == {"classes": 2, "label_bytes": {"b64": encoded}}
    single = orjson.loads(codec.predict_response_body({"classes": outputs["classes"]}, "columnar"))
    assert single == {"outputs": [2, 0]}
    dtypes = {"classes": np.int64, "label_bytes": object}
    for form in codec.FORMS:
        parsed = codec.parse_predict_response(codec.predict_response_body(outputs, form), dtypes)
        assert parsed["classes"].dtype == np.int64
        assert parsed["label_bytes"].tolist() == [b"\x00a\x00", b"b\x00"]  # NUL bytes survive


@pytest.mark.parametrize("value, dtype, message", [
    ([[1, 2], [3]], np.uint8, "different lengths"),
    ([1.5, 2.0], np.uint8, "expects uint8 values, got floating-point"),
    ([1, 256], np.uint8, "256 is out of range for uint8"),
    (["a"], np.float32, "expects float32 values, got strings"),
    ([{"b64": "***"}], object, "valid base64"),
    ([[{"b64": "AA=="}], [{"b64": "AA=="}, "x"]], object, "different lengths"),
    ([3], object, "string tensor"),
    (orjson.loads(b"[" * 1000 + b"]" * 1000), object, "nested too deeply"),
])
def test_json_values_are_checked(value, dtype, message):
    with pytest.raises(ServingError, match=message) as caught:
        codec.array_from_json(value, dtype, "x")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.http_status == 400


@pytest.mark.parametrize("body, message", [
    (b'{"instances": [', "Malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"instances": [], "signature_name": "x"}', "non-empty list"),
    (b'{"instances": [1], "inputs": [1]}', "exactly one of"),
    (b'{"inputs": [1], "signature_name": 3}', "must be a string"),
])
def test_malformed_bodies_are_invalid_arguments(body, message):
    with pytest.raises(ServingError, match=message):
        codec.parse_predict_body(body)


def _collections_while(function):
    """How many garbage collections start while `function` runs."""
    started = []

    def callback(phase, info):
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(callback)
    try:
        function()
    finally:
        gc.callbacks.remove(callback)
    return len(started)


def test_json_tensors_are_parsed_with_the_garbage_collector_paused():
    """A 224 x 224 RGB image as JSON is 50,000 lists; without the pause their allocation sets
    off collections (each a walk of every object in a process holding TensorFlow)."""
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    body = codec.predict_request_body({"image": image})

    def parse():
        _, form, payload = codec.parse_predict_body(body)
        values = codec.named_inputs(form, payload, {"image": None})
        return codec.array_from_json(values["image"], np.uint8, "image")

    assert _collections_while(parse) > 0
    with codec.gc_paused():
        assert _collections_while(parse) == 0
    assert gc.isenabled()
    with codec.gc_paused(), codec.gc_paused():  # nested: one pause, restored at the end
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with codec.gc_paused():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()
