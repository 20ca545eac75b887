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


def _tool(name, *args, wait=True, as_a_user=False):
    """Runs tools.<name>; as_a_user: with the environment a user has (no log-level settings)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    if as_a_user:
        env = {key: value for key, value in env.items()
               if key not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
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
    # Batches of 4: TensorFlow warns about retracing when 5 of the last 10 or so calls of one
    # Python function traced; every model's Keras train/test function is a new tf.function of
    # the same code, so with 2 batches an epoch the five models' first traces would be that close.
    output = _tool("demo", "--dataset=manifest", f"--data_dir={data_dir}", "--category=person",
                   "--negatives=manifest", "--input_size=32", "--batch_size=4",
                   "--performer_epochs=2", "--epochs=1", f"--run_dir={run_dir}", as_a_user=True)
    noise = [line for line in output.splitlines()
             if "WARNING" in line or "E0000" in line or "Traceback" in line]
    assert not noise, noise
    assert "[1/9] performer: training small_vgg for 2 epochs" in output
    assert "Epoch 2/2 [performer]: loss " in output and "Epoch 1/1 [no_masks]: " in output
    assert max(len(line) for line in output.splitlines() if line.startswith("Epoch ")) < 250
    assert "[9/9] export done in" in output
    table = output.split("Demo finished.")[1]
    for label in ("method (explainer)", "Explainer+cls baseline", "no filter loss", "no masks",
                  "performer top conv", "best fixed pixel", "performer accuracy", "Time: "):
        assert label in table, label
    rows = {line[:24].strip(): line.split() for line in table.splitlines() if line.strip()}
    assert rows[""][-1] == "epochs"  # the header row
    for label in ("method (explainer)", "Explainer+cls baseline", "no filter loss", "no masks"):
        assert rows[label][-1] == "1", rows[label]  # --epochs=1: every explainer trained 1 epoch
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
    assert summary["epochs_trained"] == summary["epochs_trained_no_masks"] == 1
    cls_flags = open(run_dir / "explainer_cls" / "flags.txt").read()
    assert "--objective=classification" in cls_flags and "--epochs=1" in cls_flags
    assert f"--model_dir={run_dir / 'explainer_cls'}" in cls_flags
    assert f"--performer_dir={run_dir / 'performer'}" in cls_flags
    assert f"--run_dir={run_dir}" in open(run_dir / "flags.txt").read()
    assert "--nouse_masks" in open(run_dir / "no_masks" / "flags.txt").read()
    assert "tensorboard --logdir" in output and "Demo finished" in output
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


def _same_numbers(a, b, path="", rel=1e-4):
    """Asserts two JSON-like records hold the same numbers (to `rel`) and the same everything else."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for key in a:
            _same_numbers(a[key], b[key], f"{path}/{key}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_numbers(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-6), path
    else:
        assert a == b, path


def test_flags_txt_reruns_the_same_performer_training(performer_dir, tmp_path):
    flags_text = open(os.path.join(performer_dir, "flags.txt")).read()
    assert f"--model_dir={performer_dir}" in flags_text and "--learning_rate=" in flags_text
    rerun = str(tmp_path / "performer")
    _tool("train_performer", f"--flagfile={performer_dir}/flags.txt", f"--model_dir={rerun}")
    _same_numbers(json.load(open(os.path.join(performer_dir, "history.json"))),
                  json.load(open(os.path.join(rerun, "history.json"))))


def test_flags_txt_reruns_the_same_explainer_training_with_its_own_flags(performer_dir, tmp_path):
    first = str(tmp_path / "first")
    _tool("train_explainer", *TINY, "--objective=classification", "--nouse_masks", "--eta=0.5",
          f"--performer_dir={performer_dir}", f"--model_dir={first}")
    flags_text = open(os.path.join(first, "flags.txt")).read()
    for expected in ("--objective=classification", "--nouse_masks", "--eta=0.5",
                     f"--performer_dir={performer_dir}", f"--model_dir={first}"):
        assert expected in flags_text.splitlines(), expected
    again = str(tmp_path / "again")
    _tool("train_explainer", f"--flagfile={first}/flags.txt", f"--model_dir={again}")
    _same_numbers(json.load(open(os.path.join(first, "training.json"))),
                  json.load(open(os.path.join(again, "training.json"))))
    _same_numbers(json.load(open(os.path.join(first, "eval", "metrics.json"))),
                  json.load(open(os.path.join(again, "eval", "metrics.json"))))


def test_help_lists_the_commands_own_flags_with_tuned_defaults():
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-m", "tools.train_explainer", "--help"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    help_text = result.stdout
    assert "--performer_dir" in help_text and "--keras_model" in help_text
    assert "--learning_rate: Explainer initial learning rate" in help_text
    assert "(default: '0.0001')" in help_text.split("--learning_rate:")[1].split("--")[0]
    assert "tf-explainer train-explainer --preset=demo" in help_text  # the command's own usage
