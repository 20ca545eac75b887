"""One's own Keras classifier as the performer: a .keras file plus layer names, recorded in a
performer directory and used by train-explainer, evaluate, report and export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny import tiny_performer
from tf_explainer import training
from tf_explainer.performers import PREPROCESSING, from_keras_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Synthetic data with 2 creature categories: 3 classes (background first), 32x32 like the model.
DATA = ["--dataset=synthetic", "--num_train=48", "--num_test=32", "--num_categories=2",
        "--batch_size=16"]
LAYERS = ["--target_layer=relu4", "--reconstruct_layers=fc6,fc7", "--head_layers=fc8",
          "--top_conv_layer=conv5", "--pool_layer=pool5", "--keras_preprocess=zero_one"]


def _own_performer():
    model = tiny_performer(num_classes=3).model
    return from_keras_model(model, "relu4", ["fc6", "fc7"], head_layers=["fc8"],
                            class_names=["background", "fox", "bird"],
                            preprocess=PREPROCESSING["zero_one"], top_conv_layer="conv5",
                            pool_layer="pool5")


def test_save_and_load_rebuild_ones_own_performer(tmp_path):
    performer = _own_performer()
    training.save_performer(performer, str(tmp_path))
    description = json.load(open(tmp_path / training.PERFORMER_DESCRIPTION))
    assert description["builtin"] is None and description["keras"]["target_layer"] == "relu4"
    assert description["keras"]["preprocess"] == "zero_one"
    loaded = training.load_performer(str(tmp_path))
    for field in ("target_layer", "reconstruct_layers", "head_layers", "top_conv_layer",
                  "pool_layer", "decoder_activations", "class_names", "input_size"):
        assert getattr(loaded, field) == getattr(performer, field), field
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = performer.taps()(performer.preprocess(images))
    actual = loaded.taps()(loaded.preprocess(images))
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-6)


def test_a_preprocessing_without_a_name_is_refused(tmp_path):
    performer = _own_performer()
    performer.preprocess = lambda images: images / 255.0
    with pytest.raises(ValueError, match="by name"):
        training.save_performer(performer, str(tmp_path))


def _tool(name, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", f"tools.{name}", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_tools_explain_ones_own_keras_file_end_to_end(tmp_path):
    keras_file = tmp_path / "my_model.keras"
    tiny_performer(num_classes=3).model.save(keras_file)
    performer_dir, model_dir = tmp_path / "performer", tmp_path / "explainer"
    dirs = [f"--performer_dir={performer_dir}", f"--model_dir={model_dir}"]
    _tool("train_explainer", *DATA, "--epochs=1", "--decay_epochs=1", f"--keras_model={keras_file}",
          *LAYERS, *dirs)
    description = json.load(open(performer_dir / training.PERFORMER_DESCRIPTION))
    assert description["keras"]["reconstruct_layers"] == ["fc6", "fc7"]
    assert description["class_names"] == ["background", "fox", "bird"]  # the data's, by default
    assert "--keras_model=" in open(model_dir / "flags.txt").read()
    os.remove(keras_file)  # the performer directory holds its own copy from now on

    _tool("evaluate", *DATA, "--probe_images=2", *dirs)
    metrics = json.load(open(model_dir / "eval" / "metrics.json"))["explainer"]
    assert 0 < metrics["p"] < 1 and metrics["instability_explainer"] == metrics["instability_explainer"]
    assert "report" in _tool("report", *DATA, "--max_filters=4", *dirs)
    assert (model_dir / "report" / "index.html").exists()
    _tool("export", *dirs, f"--export_base={tmp_path / 'models'}")
    version = tmp_path / "models" / "explainer" / "1"
    assert (version / "saved_model.pb").exists()
    assert open(version / "assets" / "class_names.txt").read().split() == ["background", "fox", "bird"]


def test_own_performer_needs_its_layer_names(tmp_path):
    keras_file = tmp_path / "my_model.keras"
    tiny_performer(num_classes=3).model.save(keras_file)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "tools.train_explainer", *DATA,
                             f"--keras_model={keras_file}", f"--performer_dir={tmp_path / 'p'}",
                             f"--model_dir={tmp_path / 'e'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "--target_layer and --reconstruct_layers" in result.stderr
