"""The absl tools, run as a user runs them: real processes, real files, tiny synthetic data."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=synthetic", "--num_train=96", "--num_test=48", "--num_categories=2",
        "--batch_size=16", "--performer_epochs=2", "--epochs=2", "--decay_epochs=2"]


def _tool(name, *args, wait=True):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", f"tools.{name}", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def performer_dir(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("performer"))
    _tool("train_performer", *TINY, f"--model_dir={model_dir}")
    return model_dir


def test_train_performer_writes_model_flags_and_history(performer_dir):
    for name in ("performer.keras", "performer.json", "flags.txt", "history.json"):
        assert os.path.exists(os.path.join(performer_dir, name)), name
    flags_text = open(os.path.join(performer_dir, "flags.txt")).read()
    assert "--num_train=96" in flags_text and "--performer=small_vgg" in flags_text
    assert len(json.load(open(os.path.join(performer_dir, "history.json")))["val_accuracy"]) == 2
    assert os.listdir(os.path.join(performer_dir, "logs"))


def test_train_explainer_writes_metrics_and_reuses_finished_model(performer_dir, tmp_path):
    model_dir = str(tmp_path / "explainer")
    args = [*TINY, f"--performer_dir={performer_dir}", f"--model_dir={model_dir}"]
    _tool("train_explainer", *args)
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    for key in ("p", "performer_accuracy", "reconstructed_accuracy", "instability_performer_target",
                "instability_performer_top", "instability_explainer"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert 0 < metrics["p"] < 1
    again = _tool("train_explainer", *args)
    assert "Reusing the finished explainer" in again and "Epoch 1/" not in again
    assert json.load(open(os.path.join(model_dir, "metrics.json"))) == metrics


def test_missing_performer_dir_is_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "tools.train_explainer", *TINY, f"--performer_dir={tmp_path}",
         f"--model_dir={tmp_path / 'e'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "No trained performer" in result.stderr


def test_killed_training_resumes_from_last_epoch(tmp_path):
    model_dir = str(tmp_path / "performer")
    args = [*TINY, "--performer_epochs=4", f"--model_dir={model_dir}"]
    process = _tool("train_performer", *args, wait=False)
    backup = os.path.join(model_dir, "backup")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(backup) and any("checkpoint" in f or "training_metadata" in f
                                         for _, _, files in os.walk(backup) for f in files):
            break
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be killed: " + process.stdout.read()
    time.sleep(0.5)  # let the epoch-end backup finish writing
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(model_dir, "performer.json"))
    resumed = _tool("train_performer", *args)
    epochs_run = [line for line in resumed.splitlines() if line.startswith("Epoch ")]
    assert epochs_run and not epochs_run[0].startswith("Epoch 1/"), epochs_run
    assert epochs_run[-1].startswith("Epoch 4/")
    assert os.path.exists(os.path.join(model_dir, "performer.json"))
