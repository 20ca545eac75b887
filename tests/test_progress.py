"""Progress reporting: the absl lines of long loops and the one-line-per-epoch report of fit."""

import logging

import tensorflow as tf

from tf_explainer.progress import cardinality, logged, time_left


def test_logged_yields_everything_and_reports_rate_and_eta(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        assert list(logged(range(5), "Work", total=5, every_seconds=0.0)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert any("Work: 2/5 batches" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("Work: done, 5 batches")


def test_time_left_at_the_mean_rate_so_far():
    assert time_left(2, 5, 10.0) == 15.0  # 5 s per unit, 3 units left
    assert time_left(5, 5, 10.0) == 0.0


def test_cardinality_known_and_unknown():
    assert cardinality(tf.data.Dataset.range(10).batch(3)) == 4
    assert cardinality(tf.data.Dataset.range(10).filter(lambda x: x > 2)) is None


def _tiny_fit_data():
    import numpy as np
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 2, 32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _tiny_classifier():
    import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_fit_prints_one_short_line_per_epoch_naming_the_model(tmp_path, capsys):
    from tf_explainer import training
    data = _tiny_fit_data()
    history = training.fit(_tiny_classifier(), data, data, 3, str(tmp_path / "explainer_cls"),
                           "explainer")
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("Epoch ")]
    assert [line.split(" [")[0] for line in epoch_lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all("[explainer_cls]: loss " in line and "val_accuracy " in line and len(line) < 160
               for line in epoch_lines), epoch_lines
    assert "left)" in epoch_lines[0] and "left" not in epoch_lines[-1]
    assert len(history["loss"]) == 3


def test_epoch_line_reports_progress_within_a_long_epoch(capsys):
    from tf_explainer.training import EpochLine
    _tiny_classifier().fit(_tiny_fit_data(), epochs=1, verbose=0, shuffle=False,
                           callbacks=[EpochLine("performer", every_seconds=0)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  performer: batch 1/4, ") and "left in the epoch" in lines[0]
    assert lines[-1].startswith("Epoch 1/1 [performer]: loss ")


def test_training_with_verbose_0_prints_nothing(tmp_path, capsys):
    from tf_explainer import training
    training.fit(_tiny_classifier(), _tiny_fit_data(), None, 1, str(tmp_path / "m"), "performer",
                 verbose=0)
    assert capsys.readouterr().out == ""
