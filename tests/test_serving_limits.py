"""Input limits as a served model meets them: a decompression-bomb PNG is refused from its header
before anything is decoded (the export's max_image_pixels, so TF Serving refuses it too), and
the contract double refuses oversized REST bodies with 413 without holding them."""

import base64
import os
import socket
import struct
import sys
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tf_explainer.export import DEFAULT_MAX_IMAGE_PIXELS
from tf_explainer.serving.config import single_model_config
from tf_explainer.serving.server import ModelServer

sys.path.insert(0, os.path.dirname(__file__))
from test_serving import MODEL, tiny_export  # noqa: E402

MAX_BODY = 2 * 2**20
RSS_HEADROOM_BYTES = 500 * 2**20


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(side, parts=16):
    """A valid side x side RGB PNG of black pixels, built without holding its pixels: `parts`
    identical runs of rows, each compressed once and flushed so that it stands alone in the
    deflate stream. 16000 x 16000 (768 MB of pixels) gives a ~750 KB file."""
    rows = bytes((1 + 3 * side) * (side // parts))  # filter byte 0 + pixels, per row
    compressor = zlib.compressobj(9)
    first = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-4]  # the final block; its Adler-32 covered 2 runs, not all
    adler = (len(rows) * parts % 65521) << 16 | 1  # Adler-32 of all-zero data
    stream = first + repeated * (parts - 1) + end + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def test_black_png_is_a_real_image():
    data = black_png(160)
    image = tf.io.decode_png(data).numpy()
    assert image.shape == (160, 160, 3) and not image.any()


@pytest.fixture(scope="module")
def server():
    """The tiny export (default max_image_pixels) behind a body limit of MAX_BODY."""
    with ModelServer(single_model_config(MODEL, os.path.dirname(tiny_export(0))),
                     poll_seconds=0, max_request_body_bytes=MAX_BODY) as running:
        yield running


def _memory_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Starts VmHWM (peak RSS) afresh from the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def test_png_bomb_is_refused_from_its_header_before_decoding(server):
    """16000 x 16000 pixels: decoding it costs ~13 s and ~4 GB. The server (in this process)
    must refuse it over both protocols without its peak memory growing by 500 MB."""
    bomb = black_png(16000)
    assert len(bomb) < 2**20
    body = {"signature_name": "image_bytes",
            "instances": [{"image_bytes": {"b64": base64.b64encode(bomb).decode()}}]}
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "image_bytes"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([bomb]))
    limit_phrase = (f"image_bytes[0] is 16000 x 16000 = 256000000 pixels, over the limit of "
                    f"{DEFAULT_MAX_IMAGE_PIXELS} pixels")
    rss_before = _memory_kb("VmRSS") * 1024
    peak_is_fresh = _reset_peak_rss()
    started = time.monotonic()
    response = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", json=body,
                             timeout=120)
    assert response.status_code == 400, response.text
    assert limit_phrase in response.json()["error"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                               timeout=120)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert limit_phrase in caught.value.details()
    seconds = time.monotonic() - started
    after = _memory_kb("VmHWM" if peak_is_fresh else "VmRSS") * 1024
    assert after - rss_before < RSS_HEADROOM_BYTES, (
        f"memory grew by {(after - rss_before) / 2**20:.0f} MB in {seconds:.1f} s")


def test_request_body_over_the_limit_is_413(server):
    url = f"{server.rest_url}/v1/models/{MODEL}:predict"
    response = requests.post(url, data=b" " * (MAX_BODY + 1), timeout=60)
    assert response.status_code == 413
    assert response.json()["error"] == (f"The request body ({MAX_BODY + 1} bytes) is over the "
                                        f"limit of {MAX_BODY} bytes (max_request_body_bytes).")
    images = np.zeros((1, 8, 8, 3), np.uint8)
    answer = requests.post(url, json={"signature_name": "classify", "instances": images.tolist()},
                           timeout=60)
    assert answer.status_code == 200  # the server is unharmed


def test_oversized_body_is_refused_before_it_is_sent(server):
    """A client that asks first (Expect: 100-continue, as curl does for large bodies) gets the
    413 at once and never sends the body."""
    with socket.create_connection((server.host, server.rest_port), timeout=30) as sock:
        sock.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {10 * MAX_BODY}\r\nExpect: 100-continue\r\n\r\n".encode())
        answer = sock.makefile("rb").readline()
    assert answer.startswith(b"HTTP/1.1 413")
