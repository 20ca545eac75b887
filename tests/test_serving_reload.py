"""Hot reload in the contract double: a new version folder that is half copied or corrupt never
takes down the version that serves; it is tried again when its folder changes and serves once it
loads. Checked with raw `requests` calls and tensorflow_serving.apis stubs, both protocols
answering throughout, as in TF Serving."""

import logging
import os
import shutil
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_explainer.serving.config import single_model_config
from tf_explainer.serving.server import ModelServer

sys.path.insert(0, os.path.dirname(__file__))
from test_serving import MODEL, raw_model_status, tiny_export  # noqa: E402

POLL_SECONDS = 0.2
IMAGES = np.random.default_rng(0).integers(0, 256, (1, 20, 24, 3), dtype=np.uint8)
END = get_model_status_pb2.ModelVersionStatus.END
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def exports():
    """Two exports with different weights -> {name: (export dir, expected probabilities)}."""
    result = {}
    for seed, name in ((0, "old"), (1, "new")):
        path = tiny_export(seed)
        probabilities = tf.saved_model.load(path).signatures["classify"](
            image=tf.constant(IMAGES))["probabilities"].numpy()
        result[name] = (path, probabilities)
    assert not np.allclose(result["old"][1], result["new"][1], atol=1e-4)
    return result


class Prober(threading.Thread):
    """Asks the server for a classification over REST and over gRPC, in turns, until stopped.

    answers: (protocol, version, probabilities) of every answer (REST answers carry no version:
    None); failures: every error, which a correct server never gives here."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.answers, self.failures = [], []
        self.stopping = threading.Event()

    def run(self):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = MODEL, "classify"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(IMAGES))
        body = {"signature_name": "classify", "instances": IMAGES.tolist()}
        with grpc.insecure_channel(self.server.grpc_target) as channel, \
                requests.Session() as session:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stopping.is_set():
                try:
                    response = stub.Predict(request, timeout=30)
                    self.answers.append(("grpc", response.model_spec.version.value,
                                         tf.make_ndarray(response.outputs["probabilities"])))
                except grpc.RpcError as error:
                    self.failures.append(("grpc", error.code(), error.details()))
                answer = session.post(f"{self.server.rest_url}/v1/models/{MODEL}:predict",
                                      json=body, timeout=30)
                if answer.status_code == 200:
                    prediction = answer.json()["predictions"][0]
                    self.answers.append(("rest", None, np.array(prediction["probabilities"])))
                else:
                    self.failures.append(("rest", answer.status_code, answer.text))
                time.sleep(0.02)

    def stop(self):
        self.stopping.set()
        self.join(timeout=60)


def _rest_status(server):
    response = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=30)
    assert response.status_code == 200, response.text
    return {int(item["version"]): item for item in response.json()["model_version_status"]}


def _grpc_status(server):
    return {item.version: item
            for item in raw_model_status(server.grpc_target).model_version_status}


def _served_version(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = MODEL
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.GetModelMetadata(request, timeout=30).model_spec.version.value


def _wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS / 2)


def _failed_loads(caplog, version):
    return [record for record in caplog.records
            if f"version {version} failed to load" in record.getMessage()]


def test_half_copied_and_corrupt_versions_never_take_the_model_down(exports, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    (old_dir, old_answer), (new_dir, new_answer) = exports["old"], exports["new"]
    base = tmp_path / MODEL
    shutil.copytree(old_dir, base / "2")
    with ModelServer(single_model_config(MODEL, str(base)), poll_seconds=POLL_SECONDS) as server:
        prober = Prober(server)
        prober.start()
        try:
            # A half-written version: saved_model.pb alone, as `cp` leaves it mid-copy.
            os.makedirs(base / "4")
            shutil.copy(os.path.join(new_dir, "saved_model.pb"), base / "4")
            arrived = time.monotonic()
            _wait_for(lambda: 4 in _rest_status(server), "version 4 to be tried")
            _wait_for(lambda: _rest_status(server)[4]["state"] == "END", "version 4 to fail")
            rest, grpc_status = _rest_status(server), _grpc_status(server)
            assert rest[2] == {"version": "2", "state": "AVAILABLE",
                               "status": {"error_code": "OK", "error_message": ""}}
            assert rest[4]["status"]["error_code"] == "NOT_FOUND"
            assert "variables" in rest[4]["status"]["error_message"]
            assert grpc_status[4].state == END and grpc_status[2].state == AVAILABLE
            assert grpc_status[4].status.error_message == rest[4]["status"]["error_message"]
            assert _served_version(server) == 2

            # The rest of the files arrive 10 s later; until then the folder does not change
            # and version 4 is not tried again, however many polls pass.
            time.sleep(max(0.0, arrived + 10 - time.monotonic()))
            assert len(_failed_loads(caplog, 4)) == 1
            for name in os.listdir(new_dir):
                source, target = os.path.join(new_dir, name), base / "4" / name
                if os.path.isdir(source):
                    shutil.copytree(source, target)
                elif name != "saved_model.pb":
                    shutil.copy(source, target)
            _wait_for(lambda: _served_version(server) == 4, "version 4 to serve")
            rest = _rest_status(server)
            assert rest[4]["state"] == "AVAILABLE" and rest[4]["status"]["error_code"] == "OK"
            assert rest[2]["state"] == "END"  # unloaded once 4 served, as the policy asks

            # A corrupt saved_model.pb in an otherwise complete folder.
            shutil.copytree(new_dir, base / "5", ignore=shutil.ignore_patterns("saved_model.pb"))
            (base / "5" / "saved_model.pb").write_bytes(b"\x08\x01not a SavedModel" * 64)
            _wait_for(lambda: _rest_status(server).get(5, {}).get("state") == "END",
                      "version 5 to fail")
            status = _rest_status(server)[5]["status"]
            assert status["error_code"] == "DATA_LOSS"
            assert "saved_model.pb" in status["error_message"]
            time.sleep(1)  # a few more polls: version 4 keeps serving
            assert _served_version(server) == 4
        finally:
            prober.stop()
    assert prober.failures == []
    assert len(prober.answers) >= 20  # both protocols kept asking the whole time
    versions = [version for protocol, version, _ in prober.answers if protocol == "grpc"]
    assert versions[0] == 2 and versions[-1] == 4 and versions == sorted(versions)
    assert set(versions) == {2, 4}
    for protocol, version, answer in prober.answers:
        if version is None:  # REST: the answer itself tells which version gave it
            assert (np.allclose(answer, old_answer, atol=1e-5)
                    or np.allclose(answer, new_answer, atol=1e-5)), answer
        else:
            np.testing.assert_allclose(answer, old_answer if version == 2 else new_answer,
                                       atol=1e-5)
    rest_answers = [answer for protocol, _, answer in prober.answers if protocol == "rest"]
    assert np.allclose(rest_answers[0], old_answer, atol=1e-5)
    assert np.allclose(rest_answers[-1], new_answer, atol=1e-5)


def test_a_failed_version_serves_once_it_is_fixed_without_a_restart(exports, tmp_path):
    """No serving version at all: a corrupt first version is NOT_FOUND for requests, reports
    its error, and serves as soon as a good saved_model.pb replaces the corrupt one."""
    new_dir, new_answer = exports["new"]
    base = tmp_path / MODEL
    shutil.copytree(new_dir, base / "1", ignore=shutil.ignore_patterns("saved_model.pb"))
    (base / "1" / "saved_model.pb").write_bytes(b"")
    with ModelServer(single_model_config(MODEL, str(base)), poll_seconds=POLL_SECONDS) as server:
        assert _rest_status(server)[1]["status"]["error_code"] == "DATA_LOSS"
        response = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", timeout=30,
                                 json={"signature_name": "classify",
                                       "instances": IMAGES.tolist()})
        assert response.status_code == 404 and "Servable not found" in response.json()["error"]
        shutil.copy(os.path.join(new_dir, "saved_model.pb"), base / "1")
        _wait_for(lambda: _rest_status(server)[1]["state"] == "AVAILABLE", "version 1 to load")
        response = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", timeout=30,
                                 json={"signature_name": "classify",
                                       "instances": IMAGES.tolist()})
        np.testing.assert_allclose(response.json()["predictions"][0]["probabilities"],
                                   new_answer[0], atol=1e-5)
