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
    metrics = json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["explainer"]
    for key in ("p", "performer_accuracy", "reconstructed_accuracy", "instability_performer_target",
                "instability_performer_top", "instability_explainer"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert 0 < metrics["p"] < 1
    again = _tool("train_explainer", *args)
    assert "Reusing the finished explainer" in again and "Epoch 1/" not in again
    assert json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["explainer"] == metrics


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


def _write_manifest(folder, count=40, size=48, seed=0):
    """A tiny landmark manifest in the project's format: red 'person' blobs with a head landmark."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 80, (size, size, 3)).astype("uint8")
        x, y = rng.integers(4, size - 20, 2)
        pixels[y:y + 16, x:x + 12] = [220, 40, 40]
        name = f"images/im{i:03d}.png"
        Image.fromarray(pixels).save(os.path.join(folder, name))
        split = "test" if i % 4 == 0 else "train"
        lines.append({"image": name, "bbox": [float(x - 2), float(y - 2), float(x + 14), float(y + 18)],
                      "label": "person", "landmarks": {"head_top": [float(x + 6), float(y + 1)],
                                                       "torso": [float(x + 6), float(y + 9)]},
                      "split": split})
        bx = 0.0 if x > size / 2 else float(size - 16)
        lines.append({"image": name, "bbox": [bx, 0.0, bx + 16, 16.0], "label": "background",
                      "landmarks": {}, "split": split})
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")


def test_demo_tool_runs_on_a_manifest_folder(tmp_path):
    data_dir = tmp_path / "data"
    _write_manifest(str(data_dir))
    run_dir = tmp_path / "run"
    output = _tool("demo", "--dataset=manifest", f"--data_dir={data_dir}", "--category=person",
                   "--negatives=manifest", "--input_size=32", "--batch_size=16",
                   "--performer_epochs=2", "--epochs=1", f"--run_dir={run_dir}")
    summary = json.load(open(run_dir / "summary.json"))
    for key in ("performer_accuracy", "p", "instability_performer_target", "instability_performer_top",
                "instability_explainer", "reconstructed_accuracy", "wall_seconds",
                "part_coverage", "part_coverage_top", "duplicate_filters", "duplicate_filters_top",
                "instability_explainer_cls", "instability_no_filter_loss", "instability_no_masks",
                "instability_fixed_point", "grad_ratio_filter_conv_interp_2"):
        assert isinstance(summary[key], (int, float)), key
    assert 0 <= summary["part_coverage"] <= 1 and 0 <= summary["duplicate_filters"] <= 1
    metrics = json.load(open(run_dir / "explainer" / "eval" / "metrics.json"))
    ratios = metrics["explainer"]["training"]["gradient_ratios"]
    assert len(ratios) == metrics["explainer"]["training"]["epochs_trained"] >= 1
    assert "grad_ratio_filter_conv_interp_2 " in output.replace(":", " ")  # in the epoch log line
    assert metrics["no_filter_loss"]["training"]["filter_loss_weight"] == 0.0
    assert "--objective=classification" in open(run_dir / "explainer_cls" / "flags.txt").read()
    assert "--nouse_masks" in open(run_dir / "no_masks" / "flags.txt").read()
    assert "tensorboard --logdir" in output
    baseline = json.load(open(run_dir / "explainer" / "eval" / "metrics.json"))["explainer_cls"]
    assert baseline["performer_error"] == 1 - summary["performer_accuracy"]
    assert (run_dir / "explainer" / "report" / "index.html").exists()
    assert os.listdir(run_dir / "explainer" / "logs" / "probe")
    assert json.load(open(run_dir / "performer" / "performer.json"))["class_names"] == ["background", "person"]
    assert (run_dir / "export" / "explainer" / "1" / "saved_model.pb").exists()
    assert "SavedModel for TF Serving" in output


@pytest.fixture(scope="module")
def explainer_dir(performer_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("explainer"))
    _tool("train_explainer", *TINY, f"--performer_dir={performer_dir}", f"--model_dir={model_dir}")
    return model_dir


def test_evaluate_reports_explainer_baseline_and_contributions(performer_dir, explainer_dir, tmp_path):
    baseline_dir = str(tmp_path / "explainer_cls")
    _tool("train_explainer", *TINY, "--objective=classification", f"--performer_dir={performer_dir}",
          f"--model_dir={baseline_dir}")
    output = _tool("evaluate", *TINY, "--probe_images=3", f"--performer_dir={performer_dir}",
                   f"--model_dir={explainer_dir}", f"--baseline_dir={baseline_dir}")
    metrics = json.load(open(os.path.join(explainer_dir, "eval", "metrics.json")))
    for name in ("explainer", "explainer_cls"):
        for key in ("p", "performer_error", "reconstructed_error", "reconstructed_error_increase",
                    "instability_performer_target", "instability_performer_top",
                    "instability_explainer"):
            assert key in metrics[name], (name, key)
    assert metrics["explainer"]["performer_error"] == metrics["explainer_cls"]["performer_error"]
    assert len(metrics["part_contributions"]) == 3
    first = metrics["part_contributions"][0]["filters"]
    assert [f["contribution"] for f in first] == sorted((f["contribution"] for f in first), reverse=True)
    summary = open(os.path.join(explainer_dir, "eval", "summary.txt")).read()
    assert "explainer_cls:" in summary and "location instability" in summary and summary in output


def test_explainer_trains_from_the_feature_cache(performer_dir, tmp_path):
    cache = str(tmp_path / "cache")
    output = _tool("cache_features", *TINY, "--cache_shards=2", "--cache_compression=gzip",
                   f"--performer_dir={performer_dir}", f"--feature_cache={cache}")
    assert "Cached 96 training examples" in output
    model_dir = str(tmp_path / "explainer")
    trained = _tool("train_explainer", *TINY, f"--feature_cache={cache}",
                    f"--performer_dir={performer_dir}", f"--model_dir={model_dir}")
    assert "flip augmentation is not available" in trained
    metrics = json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["explainer"]
    assert 0 < metrics["p"] < 1 and metrics["instability_explainer"] == metrics["instability_explainer"]


def test_export_tool_writes_numbered_versions(performer_dir, explainer_dir, tmp_path):
    base = tmp_path / "models"
    args = [f"--performer_dir={performer_dir}", f"--model_dir={explainer_dir}", f"--export_base={base}",
            "--model_name=parts"]
    assert f"Exported {base}/parts/1" in _tool("export", *args, "--max_image_pixels=40000")
    assert f"Exported {base}/parts/2" in _tool("export", *args)
    from tf_explainer.export import read_filter_metadata
    assert read_filter_metadata(str(base / "parts" / "1"))["max_image_pixels"] == 40000
    assert sorted(os.listdir(base / "parts")) == ["1", "2"]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    again = subprocess.run([sys.executable, "-m", "tools.export", *args, "--version=2"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists" in again.stderr
    import tensorflow as tf
    loaded = tf.saved_model.load(str(base / "parts" / "2"))
    out = loaded.signatures["serving_default"](image=tf.zeros([1, 50, 60, 3], tf.uint8))
    class_names = json.load(open(os.path.join(performer_dir, "performer.json")))["class_names"]
    assert out["probabilities"].shape == (1, len(class_names))
    assert open(base / "parts" / "2" / "assets" / "class_names.txt").read().split() == class_names
