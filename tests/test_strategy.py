"""Strategies by name, the custom training loop (mirrored over 2 logical CPUs, resuming after a
crash), and multi-worker training in 2 local processes: the library loop and the real tools."""

import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.multi_worker_job import BATCHES, LEARNING_RATE, OPTIONS
from tests.tiny import image_batches, tiny_performer
from tf_explainer import training
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.strategy import is_chief, make_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 65 and 33 images: each split ends in a 1-image batch, which would leave one worker an empty
# slice (fails in TF's CPU convolution); the tools drop it under several replicas.
TINY_TOOL_FLAGS = ["--dataset=synthetic", "--num_train=65", "--num_test=33", "--num_categories=2",
                   "--batch_size=16", "--performer_epochs=1", "--epochs=1", "--decay_epochs=1",
                   "--strategy=multi_worker"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# ---- make_strategy ------------------------------------------------------------------------
def test_make_strategy_builds_the_local_strategies():
    default = make_strategy("default")
    assert default is tf.distribute.get_strategy() and default.num_replicas_in_sync == 1
    assert len(make_strategy("one_device").extended.worker_devices) == 1
    one = make_strategy("one_device", devices=["/cpu:1"])
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.extended.worker_devices[0].endswith("CPU:1")
    mirrored = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync == 2
    assert all(is_chief(s) for s in (default, one, mirrored))


def test_make_strategy_rejects_bad_names_and_cluster_configs(monkeypatch):
    with pytest.raises(ValueError, match="Unknown strategy 'horovod'.*multi_worker"):
        make_strategy("horovod")
    with pytest.raises(ValueError, match="exactly one device"):
        make_strategy("one_device", devices=["/cpu:0", "/cpu:1"])
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match="is not in the cluster"):
        make_strategy("multi_worker")


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="No TPU found"):
        make_strategy("tpu")
    with pytest.raises(RuntimeError, match="No TPU reachable for 'local'"):
        make_strategy("tpu", tpu="local")
    address = f"grpc://127.0.0.1:{_free_ports(1)[0]}"
    with pytest.raises(RuntimeError, match=f"No TPU reachable at {address}"):
        make_strategy("tpu", tpu=address)


# ---- the custom loop in this process ------------------------------------------------------
def _initial_weights():
    reference = build_explainer(tiny_performer(), **OPTIONS)
    initialize_statistics(reference, image_batches(2))
    return reference.get_weights()


def _explainer(strategy, weights):
    with strategy.scope():
        explainer = build_explainer(tiny_performer(), **OPTIONS)
        explainer.set_weights(weights)
        explainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9))
    return explainer


def _fit_one_device(weights, epochs):
    """The reference: plain model.fit on one device. Returns (weights, history)."""
    explainer = _explainer(tf.distribute.get_strategy(), weights)
    history = explainer.fit(image_batches(**BATCHES), validation_data=image_batches(1), epochs=epochs,
                            verbose=0, shuffle=False).history
    return explainer.get_weights(), history


def _assert_weights_equal(expected, actual):
    for a, b in zip(expected, actual):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_custom_loop_under_mirrored_matches_one_device_fit(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    initial = _initial_weights()
    explainer = _explainer(make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"]), initial)
    logs = str(tmp_path / "logs")
    history = training.custom_fit(explainer, image_batches(**BATCHES), image_batches(1), 1,
                                  str(tmp_path / "backup"), [keras.callbacks.TensorBoard(logs)])
    expected_weights, expected_history = _fit_one_device(initial, 1)
    assert max(np.abs(a - b).max() for a, b in zip(expected_weights, initial)) > 1e-4
    _assert_weights_equal(expected_weights, explainer.get_weights())
    assert set(history) == set(expected_history)
    for name in ("loss", "reconstruction", "p", "val_loss", "val_reconstructed_accuracy"):
        np.testing.assert_allclose(history[name], expected_history[name], rtol=1e-5, atol=1e-6)
    assert os.listdir(os.path.join(logs, "train")) and os.listdir(os.path.join(logs, "validation"))
    assert not (tmp_path / "backup").exists()  # deleted when training ends, as BackupAndRestore does


class _CrashAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_custom_loop_resumes_after_a_crash_from_the_last_epoch(tmp_path):
    initial = _initial_weights()
    backup = str(tmp_path / "backup")
    default = tf.distribute.get_strategy()
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.custom_fit(_explainer(default, initial), image_batches(**BATCHES), None, 2, backup,
                            [_CrashAtEpoch(1)])
    assert sorted(os.listdir(backup)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    resumed = _explainer(default, initial)
    history = training.custom_fit(resumed, image_batches(**BATCHES), None, 2, backup)
    assert len(history["loss"]) == 1  # only the second epoch ran
    _assert_weights_equal(_fit_one_device(initial, 2)[0], resumed.get_weights())
    assert int(resumed.optimizer.iterations.numpy()) == 2 * BATCHES["num_batches"]
    assert not os.path.exists(backup)


def test_fit_resumes_when_killed_while_writing_the_backup(tmp_path):
    """A kill in the middle of the epoch-end backup leaves a truncated weights file; the rerun
    resumes from the epoch before it instead of failing to open the file."""
    initial = _initial_weights()
    default = tf.distribute.get_strategy()
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.fit(_explainer(default, initial), image_batches(**BATCHES), None, 3, str(tmp_path),
                     "explainer", [_CrashAtEpoch(2)])
    weights = tmp_path / training.BACKUP_DIR / "latest.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 3])  # what a SIGKILL during save_weights leaves
    resumed = _explainer(default, initial)
    history = training.fit(resumed, image_batches(**BATCHES), None, 3, str(tmp_path), "explainer",
                           verbose=0)
    assert len(history["loss"]) == 2  # epochs 2 and 3: epoch 2's backup was lost, epoch 1's kept
    _assert_weights_equal(_fit_one_device(initial, 3)[0], resumed.get_weights())
    assert not (tmp_path / training.BACKUP_DIR).exists()


# ---- multi-worker: 2 processes on 127.0.0.1 -------------------------------------------------
def _run_cluster(command, tmp_path, name, timeout=300):
    """Runs command(index) as 2 workers, each with its TF_CONFIG and its own TMPDIR; checks they
    succeed and leave their temporary folders empty. Returns their outputs."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes, temporary = [], []
    for index in range(2):
        temporary.append(tmp_path / f"{name}_tmp_{index}")
        temporary[-1].mkdir()
        env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               "TMPDIR": str(temporary[-1]),
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(command(index), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    assert [os.listdir(folder) for folder in temporary] == [[], []]
    return outputs


def test_multi_worker_training_matches_one_device_and_only_the_chief_writes(tmp_path):
    initial = _initial_weights()
    np.savez(tmp_path / "initial.npz", *initial)
    epochs = 2
    _run_cluster(lambda i: [sys.executable, "-m", "tests.multi_worker_job", str(tmp_path / "initial.npz"),
                            str(tmp_path / f"model_{i}"), str(tmp_path / f"out_{i}"), str(epochs)],
                 tmp_path, "job")
    expected, _ = _fit_one_device(initial, epochs)
    for index in range(2):
        trained = np.load(tmp_path / f"out_{index}.npz")
        _assert_weights_equal(expected, [trained[name] for name in trained.files])
    chief = tmp_path / "model_0"
    assert sorted(os.listdir(chief)) == ["explainer.keras", "logs"]  # backup deleted at the end
    assert not (tmp_path / "model_1").exists()  # the other worker wrote nothing
    listings = json.load(open(tmp_path / "out_0.backups.json"))  # the chief's backup, per epoch
    assert listings == [["checkpoint", f"ckpt-{e}.data-00000-of-00001", f"ckpt-{e}.index"]
                        for e in range(1, epochs + 1)]
    assert not (tmp_path / "out_1.backups.json").exists()  # callbacks run on the chief only
    reloaded = keras.saving.load_model(chief / "explainer.keras")
    _assert_weights_equal(expected, reloaded.get_weights())


def _epoch_logs(output):
    """The per-epoch metric lines the custom loop logs (global values: equal on every worker)."""
    return re.findall(r"Epoch \d+/\d+: .*loss .*", output)


@pytest.mark.slow
def test_tools_train_under_multi_worker_and_mixed_precision(tmp_path):
    performer_dir, explainer_dir = tmp_path / "performer", tmp_path / "explainer"
    outputs = _run_cluster(lambda i: [sys.executable, "-m", "tools.train_performer", *TINY_TOOL_FLAGS,
                                      f"--model_dir={performer_dir}"], tmp_path, "performer")
    assert sorted(os.listdir(performer_dir)) == ["flags.txt", "history.json", "logs", "performer.json",
                                                 "performer.keras"]
    assert _epoch_logs(outputs[0]) and _epoch_logs(outputs[0]) == _epoch_logs(outputs[1])
    outputs = _run_cluster(lambda i: [sys.executable, "-m", "tools.train_explainer", *TINY_TOOL_FLAGS,
                                      "--mixed_precision=mixed_bfloat16", f"--performer_dir={performer_dir}",
                                      f"--model_dir={explainer_dir}"], tmp_path, "explainer")
    assert sorted(os.listdir(explainer_dir)) == ["eval", "explainer.keras", "flags.txt", "logs",
                                                 "training.json"]
    assert sorted(os.listdir(explainer_dir / "logs")) == ["probe", "train", "validation"]
    assert _epoch_logs(outputs[0]) and _epoch_logs(outputs[0]) == _epoch_logs(outputs[1])
    assert "location instability" in outputs[0] and "location instability" not in outputs[1]
    flags_text = open(explainer_dir / "flags.txt").read()
    assert "--strategy=multi_worker" in flags_text and "--mixed_precision=mixed_bfloat16" in flags_text
    assert 0 < json.load(open(explainer_dir / "eval" / "metrics.json"))["explainer"]["p"] < 1
    explainer = keras.saving.load_model(explainer_dir / "explainer.keras")
    assert explainer.layer_dtype.name == "mixed_bfloat16"
    assert {v.dtype for v in explainer.weights} == {"float32"}
