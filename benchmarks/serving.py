"""Serving latency of exported explainers through REST and gRPC (the contract double).

For each model of `models` (by default the project's small default network and a VGG-16-shaped
one at 224 x 224, the size users serve), `run()` exports a random-weight explainer (weights do
not change latency), starts tools/serve.py in its own process (as a model server runs), and
times requests from this process with the library's clients. The signatures compared alternate
request by request, so load from other jobs on the machine hits them alike. Images are random
uint8 at the model's input size. serving_default is also timed over gRPC with an output_filter
that leaves `part_maps` out (every other output of the contract kept): clients that draw no
maps need not receive them. TF Serving's REST API has no output_filter, so REST is timed with
every output.

JSON written to benchmarks/results/serving.json:
  machine                        cpus, platform, tensorflow, keras versions.
  models                         per model ("default", "vgg16"):
    performer, num_classes       the built-in performer exported, its number of classes.
    input_size                   [H, W] of the images sent.
    requests_per_case            timed requests per case.
    warmup_requests              untimed requests per case before the timed ones.
    cases                        "<protocol>_<signature>_b<batch>" (protocol rest|grpc, signature
                                 serving_default|classify, batch 1|8), and
                                 "grpc_serving_default_no_part_maps_b<batch>" -> {p50_ms, p99_ms,
                                 mean_ms}: client-side wall time per request, encoding and
                                 decoding included; server_cpu_ms: the server process's CPU time
                                 per request (mean; Linux only), which load from other jobs on
                                 the machine barely changes, unlike wall time.
    ratios                       "<protocol>_b<batch>" -> {p50, p99, server_cpu}: serving_default
                                 / classify (server_cpu null when classify used less than a
                                 10 ms clock tick per request); "grpc_no_part_maps_b<batch>": the
                                 same without part_maps.
    latency_ratio_max            the largest p50 ratio with every output (REST and gRPC).
    latency_ratio_max_no_part_maps  the largest p50 "grpc_no_part_maps" ratio.
    server_cpu_ratio_max         the largest server_cpu ratio with every output.
    profile                      where a request's time goes, measured in this process on the
                                 same SavedModel, per "<signature>_b<batch>": model_ms (the
                                 signature called directly; model_cpu_ms: its CPU time in this
                                 process), rest_response_bytes, rest_encode_ms
                                 (server: outputs -> JSON), rest_decode_ms (client: JSON ->
                                 arrays), grpc_response_bytes, grpc_encode_ms (outputs ->
                                 TensorProtos with typed fields, as the server sends them),
                                 grpc_decode_ms (-> arrays); medians. What the cases add on top
                                 is transport, request decoding and the servers' own overhead.
  latency_ratio_max              models.default.latency_ratio_max (target <= 1.25; the default
                                 network is small, so the explainer is a large share of it).
  latency_ratio_max_vgg16        models.vgg16.latency_ratio_max (target <= 1.25).
  latency_ratio_max_vgg16_no_part_maps  models.vgg16.latency_ratio_max_no_part_maps.
  server_cpu_ratio_max_vgg16     models.vgg16.server_cpu_ratio_max.
"""

import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tf_explainer.build import build_explainer
from tf_explainer.export import EXPLANATION_OUTPUTS, export_explainer
from tf_explainer.performers import build_performer
from tf_explainer.serving import GrpcClient, RestClient, codec
from tf_explainer.serving.servable import Servable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "explainer"
SIGNATURES = ("serving_default", "classify")
PROTOCOLS = ("rest", "grpc")
NO_PART_MAPS = "serving_default_no_part_maps"
NO_PART_MAPS_FILTER = [name for name in EXPLANATION_OUTPUTS if name != "part_maps"]


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One exported model to time: a built-in performer at an input size (None: its own)."""
    name: str
    performer: str
    num_classes: int
    input_size: Optional[int] = None
    requests_per_case: int = 100
    warmup_requests: int = 10
    profile_repeats: int = 25


# The project's default network, and the VGG-16 shape (224 x 224, 200 classes as CUB-200) with
# few requests: on 2 CPU cores a batch of 8 takes 5-10 s, and the whole run a few minutes.
DEFAULT_MODELS = (
    ModelCase("default", "small_vgg", 4),
    ModelCase("vgg16", "vgg16", 200, input_size=224, requests_per_case=5, warmup_requests=1,
              profile_repeats=2),
)


def start_double(base_path, timeout=300):
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


def process_cpu_seconds(pid):
    """User + system CPU time of process `pid` so far, every thread included (None where
    /proc is missing). Clock ticks: 10 ms resolution, fine for means over many requests."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _statistics(seconds, cpu_seconds):
    ms = 1000 * np.asarray(seconds)
    result = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
              "mean_ms": float(ms.mean())}
    if None not in cpu_seconds:
        result["server_cpu_ms"] = 1000 * float(np.mean(cpu_seconds))
    return result


def _median_ms(function, repeats, clock=time.perf_counter):
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return 1000 * float(np.median(times))


def _requests(protocol, client, image):
    """{case signature: call} of one round: serving_default and classify, and over gRPC
    serving_default without part maps."""
    calls = {signature: (lambda s=signature: client.predict({"image": image}, s))
             for signature in SIGNATURES}
    if protocol == "grpc":
        calls[NO_PART_MAPS] = lambda: client.predict({"image": image}, "serving_default",
                                                     output_filter=NO_PART_MAPS_FILTER)
    return calls


def time_cases(clients, images, requests_per_case, warmup_requests, server_pid):
    """Latency (and the server's CPU time) per protocol, signature and batch; the signatures
    alternate request by request."""
    cases = {}
    for protocol, client in clients.items():
        for batch, image in images.items():
            calls = _requests(protocol, client, image)
            latencies = {signature: [] for signature in calls}
            cpu = {signature: [] for signature in calls}
            for step in range(warmup_requests + requests_per_case):
                for signature, call in calls.items():
                    cpu_before = process_cpu_seconds(server_pid)
                    start = time.perf_counter()
                    call()
                    elapsed = time.perf_counter() - start
                    cpu_after = process_cpu_seconds(server_pid)
                    if step >= warmup_requests:
                        latencies[signature].append(elapsed)
                        cpu[signature].append(None if cpu_before is None
                                              else cpu_after - cpu_before)
            for signature, seconds in latencies.items():
                cases[f"{protocol}_{signature}_b{batch}"] = _statistics(seconds, cpu[signature])
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
            protos = {key: codec.typed_tensor_proto(value) for key, value in outputs.items()}
            run_model = functools.partial(servable.predict, signature, {"image": image})
            result[f"{signature_name}_b{batch}"] = {
                "model_ms": _median_ms(run_model, repeats),
                "model_cpu_ms": _median_ms(run_model, repeats, clock=time.process_time),
                "rest_response_bytes": len(body),
                "rest_encode_ms": _median_ms(lambda: codec.predict_response_body(outputs, "row"),
                                             repeats),
                "rest_decode_ms": _median_ms(lambda: codec.parse_predict_response(body, dtypes),
                                             repeats),
                "grpc_response_bytes": sum(p.ByteSize() for p in protos.values()),
                "grpc_encode_ms": _median_ms(
                    lambda: [codec.typed_tensor_proto(v) for v in outputs.values()], repeats),
                "grpc_decode_ms": _median_ms(
                    lambda: [codec.ndarray(p) for p in protos.values()], repeats),
            }
    return result


def _ratios(cases, batch_sizes):
    ratios = {}
    for protocol in PROTOCOLS:
        for batch in batch_sizes:
            light = cases[f"{protocol}_classify_b{batch}"]
            variants = {protocol: "serving_default"}
            if protocol == "grpc":
                variants["grpc_no_part_maps"] = NO_PART_MAPS
            for name, signature in variants.items():
                full = cases[f"{protocol}_{signature}_b{batch}"]
                ratios[f"{name}_b{batch}"] = {"p50": full["p50_ms"] / light["p50_ms"],
                                              "p99": full["p99_ms"] / light["p99_ms"]}
                if "server_cpu_ms" in full:  # None when classify used under one clock tick
                    ratios[f"{name}_b{batch}"]["server_cpu"] = (
                        full["server_cpu_ms"] / light["server_cpu_ms"]
                        if light["server_cpu_ms"] > 0 else None)
    return ratios


def measure_model(case: ModelCase, batch_sizes, base) -> dict:
    """Exports `case`'s model under `base`, serves it and times it (keys: module docstring)."""
    keras.utils.set_random_seed(0)
    performer = build_performer(case.performer, case.num_classes, input_size=case.input_size)
    explainer = build_explainer(performer)
    rng = np.random.default_rng(0)
    images = {batch: rng.integers(0, 256, (batch, *performer.input_size, 3), dtype=np.uint8)
              for batch in batch_sizes}
    export_dir = export_explainer(explainer, performer, base, MODEL_NAME)
    del performer, explainer  # the server and the profile load the export instead
    process, rest_url, grpc_target = start_double(os.path.dirname(export_dir))
    clients = {"rest": RestClient(rest_url, MODEL_NAME, timeout=600),
               "grpc": GrpcClient(grpc_target, MODEL_NAME, timeout=600)}
    try:
        cases = time_cases(clients, images, case.requests_per_case, case.warmup_requests,
                           process.pid)
    finally:
        for client in clients.values():
            client.close()
        process.terminate()
        process.wait(timeout=120)
    breakdown = profile(export_dir, images, repeats=case.profile_repeats)
    ratios = _ratios(cases, batch_sizes)
    full_outputs = {name: ratio for name, ratio in ratios.items() if "no_part_maps" not in name}
    return {
        "performer": case.performer,
        "num_classes": case.num_classes,
        "input_size": [int(d) for d in images[batch_sizes[0]].shape[1:3]],
        "requests_per_case": case.requests_per_case,
        "warmup_requests": case.warmup_requests,
        "cases": cases,
        "ratios": ratios,
        "latency_ratio_max": max(ratio["p50"] for ratio in full_outputs.values()),
        "latency_ratio_max_no_part_maps": max(ratio["p50"] for name, ratio in ratios.items()
                                              if "no_part_maps" in name),
        "server_cpu_ratio_max": max((ratio["server_cpu"] for ratio in full_outputs.values()
                                     if ratio.get("server_cpu") is not None), default=None),
        "profile": breakdown,
    }


def run(output="benchmarks/results/serving.json", models=DEFAULT_MODELS,
        batch_sizes=(1, 8)) -> dict:
    """Measures every model, writes `output` (when set) and returns the results (keys: module
    docstring; the headline keys name the models "default" and "vgg16" when they are run)."""
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "tensorflow": tf.__version__, "keras": keras.__version__},
               "models": {}}
    for case in models:
        with tempfile.TemporaryDirectory() as base:
            results["models"][case.name] = measure_model(case, tuple(batch_sizes), base)
    measured = results["models"]
    if "default" in measured:
        results["latency_ratio_max"] = measured["default"]["latency_ratio_max"]
    if "vgg16" in measured:
        results["latency_ratio_max_vgg16"] = measured["vgg16"]["latency_ratio_max"]
        results["latency_ratio_max_vgg16_no_part_maps"] = measured["vgg16"][
            "latency_ratio_max_no_part_maps"]
        results["server_cpu_ratio_max_vgg16"] = measured["vgg16"]["server_cpu_ratio_max"]
    if output:
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
