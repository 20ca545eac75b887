"""Distribution strategies and mixed precision for training.

Tools pick a strategy by name with `make_strategy`, build and compile their models inside
`strategy.scope()` and feed GLOBAL batches (each replica gets its slice). Under
MultiWorkerMirroredStrategy every worker runs the same program; only the chief writes into the
model directory (`writable_dir`).
"""

import contextlib
import json
import os
import shutil
import socket
import tempfile
from urllib.parse import urlparse

import keras
import tensorflow as tf
from absl import logging

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")


def make_strategy(name, devices=None, tpu=None):
    """A tf.distribute strategy by name.

    Args:
      name: "default" (no distribution), "one_device", "mirrored" (all GPUs of this machine, or
        `devices`), "multi_worker" (the cluster in the TF_CONFIG environment variable; create it
        before any other TensorFlow work in the process) or "tpu".
      devices: device names: one for "one_device" (default: the first GPU, else the CPU), the
        replicas for "mirrored" (default: every GPU, else the CPU).
      tpu: for "tpu", the TPU name, "grpc://host:port" or "local" (TPU VM); None lets the
        resolver find it from the environment (TPU_NAME, Cloud TPU metadata).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if devices is not None and len(devices) != 1:
            raise ValueError(f"one_device takes exactly one device, got {devices!r}.")
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(devices[0] if devices else
                                               (gpus[0].name if gpus else "/cpu:0"))
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_tf_config_resolver())
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise ValueError(f"Unknown strategy {name!r}; use one of {STRATEGIES}.")


def _tf_config_resolver():
    """The TF_CONFIG cluster, checked so a typo fails here and not in a gRPC timeout."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        logging.warning("TF_CONFIG is not set: multi_worker runs as a single local worker.")
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        if task["type"] not in cluster or not 0 <= int(task["index"]) < len(cluster[task["type"]]):
            raise ValueError(f"task {task} is not in the cluster {cluster}")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}; got {text!r} ({error}).') from error
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _tpu_strategy(tpu):
    """TPUStrategy (written to the TF guide; untested here: these machines have no TPU)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except ValueError as error:
        raise RuntimeError(f"No TPU found ({error}). Pass the TPU name, grpc://host:port or "
                           "'local' on a TPU VM.") from error
    _check_reachable(resolver.master())
    tf.config.experimental_connect_to_cluster(resolver)
    try:
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
            tf.errors.UnavailableError) as error:
        raise RuntimeError(f"No TPU reachable for {tpu or 'the default TPU'!r}: "
                           f"{str(error).splitlines()[0]}") from error
    return tf.distribute.TPUStrategy(resolver)


def _check_reachable(master, timeout=10.0):
    """Fails fast on a TPU address nobody listens on (connecting to it would hang)."""
    if not master.startswith("grpc://"):
        return
    address = urlparse(master)
    try:
        socket.create_connection((address.hostname, address.port), timeout=timeout).close()
    except OSError as error:
        raise RuntimeError(f"No TPU reachable at {master}: {error}.") from error


def is_chief(strategy):
    """Whether this process writes checkpoints, logs and models (always, except the
    non-chief workers of a multi-worker cluster)."""
    return strategy.extended.should_checkpoint


@contextlib.contextmanager
def writable_dir(path, strategy):
    """Yields where this process saves what belongs in `path`.

    The chief saves into `path`. Every other worker must still run the same save (saving reads
    distributed variables, which takes collective ops that all workers join), so it saves into a
    temporary folder that is deleted on exit.
    """
    if is_chief(strategy):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    temporary = tempfile.mkdtemp(prefix="tf_explainer_worker_")
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def precision_policy(name):
    """Builds the models inside with a Keras mixed-precision policy, then restores the previous
    global policy (so later models in the process, e.g. an evaluation, are float32 again).

    name: "none" (leave the policy alone), "mixed_bfloat16" or "mixed_float16". Variables stay
    float32 under both; mixed_float16 also needs loss scaling, which `Model.compile` adds for a
    model whose own policy is mixed_float16 and training.train_explainer adds for the explainer.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown mixed precision {name!r}; use one of {PRECISIONS}.")
    previous = keras.mixed_precision.global_policy()
    if name != "none":
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
