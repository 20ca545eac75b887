"""Serving latency of the exported default explainer through REST and gRPC (the contract double).

`run()` exports a random-weight small_vgg explainer (weights do not change latency), starts
tools/serve.py in its own process (as a model server runs), and times requests from this process
with the library's clients. serving_default and classify requests alternate, so load from other
jobs on the machine hits both alike. Images are random uint8 at the model's input size.

JSON written to benchmarks/results/serving.json:
  machine                 cpus, platform, tensorflow, keras versions.
  input_size              [H, W] of the images sent.
  requests_per_case       timed requests per case.
  warmup_requests         untimed requests per case before the timed ones.
  cases                   "<protocol>_<signature>_b<batch>" (protocol rest|grpc, signature
                          serving_default|classify, batch 1|8) -> {p50_ms, p99_ms, mean_ms}:
                          client-side wall time per request, encoding and decoding included.
  ratios                  "<protocol>_b<batch>" -> {p50, p99}: serving_default / classify.
  latency_ratio_max       the largest p50 ratio (target <= 1.25).
  profile                 where a request's time goes, measured in this process on the same
                          SavedModel, per "<signature>_b<batch>": model_ms (the signature called
                          directly), rest_response_bytes, rest_encode_ms (server: outputs -> JSON),
                          rest_decode_ms (client: JSON -> arrays), grpc_response_bytes,
                          grpc_encode_ms (outputs -> TensorProtos), grpc_decode_ms (-> arrays);
                          medians. What the cases add on top is transport, request decoding and
                          the servers' own overhead.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_explainer.build import build_explainer
from tf_explainer.export import export_explainer
from tf_explainer.performers import build_performer
from tf_explainer.serving import GrpcClient, RestClient, codec
from tf_explainer.serving.servable import Servable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "explainer"
SIGNATURES = ("serving_default", "classify")
PROTOCOLS = ("rest", "grpc")


def start_double(base_path, timeout=120):
    """tools/serve.py on free ports in a subprocess -> (process, REST url, gRPC target)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.serve", f"--model_base_path={base_path}",
         f"--model_name={MODEL_NAME}", "--rest_port=0", "--grpc_port=0",
         "--file_system_poll_wait_seconds=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addresses = {}
    deadline = time.monotonic() + timeout
    while len(addresses) < 2:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("tools/serve.py did not print its ports.")
        kind, _, address = line.strip().partition(" ")
        if kind in ("REST", "gRPC"):
            addresses[kind] = address
    return process, addresses["REST"], addresses["gRPC"]


def _percentiles(seconds):
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def _median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def time_cases(clients, images, requests_per_case, warmup_requests):
    """Latency per protocol, signature and batch; the two signatures alternate."""
    cases = {}
    for protocol, client in clients.items():
        for batch, image in images.items():
            latencies = {signature: [] for signature in SIGNATURES}
            for step in range(warmup_requests + requests_per_case):
                for signature in SIGNATURES:
                    start = time.perf_counter()
                    client.predict({"image": image}, signature)
                    if step >= warmup_requests:
                        latencies[signature].append(time.perf_counter() - start)
            for signature in SIGNATURES:
                cases[f"{protocol}_{signature}_b{batch}"] = _percentiles(latencies[signature])
    return cases


def profile(export_dir, images, repeats):
    """Model compute and (de)serialisation per signature and batch, in this process."""
    servable = Servable(MODEL_NAME, 1, export_dir)
    result = {}
    for batch, image in images.items():
        for signature_name in SIGNATURES:
            signature = servable.signature(signature_name)
            dtypes = {key: info.numpy_dtype for key, info in signature.outputs.items()}
            outputs = servable.predict(signature, {"image": image})
            body = codec.predict_response_body(outputs, "row")
            protos = {key: codec.tensor_proto(value) for key, value in outputs.items()}
            result[f"{signature_name}_b{batch}"] = {
                "model_ms": _median_ms(lambda: servable.predict(signature, {"image": image}),
                                       repeats),
                "rest_response_bytes": len(body),
                "rest_encode_ms": _median_ms(lambda: codec.predict_response_body(outputs, "row"),
                                             repeats),
                "rest_decode_ms": _median_ms(lambda: codec.parse_predict_response(body, dtypes),
                                             repeats),
                "grpc_response_bytes": sum(p.ByteSize() for p in protos.values()),
                "grpc_encode_ms": _median_ms(
                    lambda: [codec.tensor_proto(v) for v in outputs.values()], repeats),
                "grpc_decode_ms": _median_ms(
                    lambda: [codec.ndarray(p) for p in protos.values()], repeats),
            }
    return result


def run(output="benchmarks/results/serving.json", requests_per_case=200, warmup_requests=20,
        batch_sizes=(1, 8), performer_name="small_vgg") -> dict:
    """Measures, writes `output` (when set) and returns the results (keys: module docstring)."""
    keras.utils.set_random_seed(0)
    performer = build_performer(performer_name, 4)
    explainer = build_explainer(performer)
    rng = np.random.default_rng(0)
    images = {batch: rng.integers(0, 256, (batch, *performer.input_size, 3), dtype=np.uint8)
              for batch in batch_sizes}
    with tempfile.TemporaryDirectory() as base:
        export_dir = export_explainer(explainer, performer, base, MODEL_NAME)
        process, rest_url, grpc_target = start_double(os.path.dirname(export_dir))
        clients = {"rest": RestClient(rest_url, MODEL_NAME),
                   "grpc": GrpcClient(grpc_target, MODEL_NAME)}
        try:
            cases = time_cases(clients, images, requests_per_case, warmup_requests)
        finally:
            for client in clients.values():
                client.close()
            process.terminate()
            process.wait(timeout=60)
        breakdown = profile(export_dir, images, repeats=max(10, requests_per_case // 4))
    ratios = {}
    for protocol in PROTOCOLS:
        for batch in batch_sizes:
            full, light = (cases[f"{protocol}_{s}_b{batch}"] for s in SIGNATURES)
            ratios[f"{protocol}_b{batch}"] = {"p50": full["p50_ms"] / light["p50_ms"],
                                              "p99": full["p99_ms"] / light["p99_ms"]}
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "input_size": [int(d) for d in performer.input_size],
        "requests_per_case": requests_per_case,
        "warmup_requests": warmup_requests,
        "cases": cases,
        "ratios": ratios,
        "latency_ratio_max": max(ratio["p50"] for ratio in ratios.values()),
        "profile": breakdown,
    }
    if output:
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
