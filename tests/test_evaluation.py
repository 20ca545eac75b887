import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer import evaluation, report
from tf_explainer.metrics import parts as part_metrics
from tf_explainer.build import build_explainer, initialize_statistics


def _explainer(**options):
    keras.utils.set_random_seed(0)
    explainer = build_explainer(tiny_performer(), **options)
    initialize_statistics(explainer, image_batches(2))
    return explainer


def test_part_contributions_are_gradient_times_activation():
    explainer = _explainer()
    images = next(iter(image_batches(1)))["image"]
    contributions = evaluation.part_contributions(explainer, images, class_index=1)
    assert contributions.shape == (8, explainer.part_filters)
    # Removing filter f's interpretable input changes the class score by about its contribution
    # (the head is piecewise linear): check against a finite difference of the score.
    features = explainer.performer_features(images)
    outputs = explainer(features["target"])
    x_interp, x_ordin = outputs["x_interp"], outputs["x_ordin"]
    f = int(np.argmax(np.abs(contributions).sum(0)))
    eps = 1e-3
    scaled = x_interp * (1 + eps * tf.one_hot(f, explainer.part_filters))
    base = explainer.decode(x_interp, x_ordin)["scores"][:, 1]
    moved = explainer.decode(scaled, x_ordin)["scores"][:, 1]
    np.testing.assert_allclose((moved - base).numpy() / eps, contributions[:, f], rtol=1e-2, atol=1e-4)
    assert np.abs(contributions).max() > 0


def test_default_class_is_the_performers_prediction():
    explainer = _explainer()
    images = next(iter(image_batches(1)))["image"]
    predicted = np.argmax(explainer.performer_features(images)["scores"], -1)
    np.testing.assert_allclose(evaluation.part_contributions(explainer, images),
                               evaluation.part_contributions(explainer, images, predicted), rtol=1e-6)


def test_classification_objective_trains_the_head_output_toward_categories():
    explainer = _explainer(objective="classification", category_source="label", eta=0.0,
                           filter_loss="none")
    data = image_batches(4)
    explainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = explainer.evaluate(data, verbose=0, return_dict=True)
    explainer.fit(data.repeat(), steps_per_epoch=20, verbose=0)
    after = explainer.evaluate(data, verbose=0, return_dict=True)
    assert "classification" in after and "reconstruction" not in after
    assert after["classification"] < before["classification"]
    assert after["reconstructed_accuracy"] > before["reconstructed_accuracy"]


def _landmark_explainers(count):
    """A tiny performer for the landmark batches of test_report and `count` explainers of it."""
    from tests.test_report import CLASS_NAMES
    performer = tiny_performer(num_classes=3, class_names=CLASS_NAMES)
    return performer, [build_explainer(performer) for _ in range(count)]


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_evaluating_several_explainers_and_writing_a_report_do_not_retrace(tmp_path):
    """Each explainer's collection step is traced once for every batch size, with its own
    retracing statistics: before, the last smaller batch retraced and the steps of all
    explainers counted as one function, so TensorFlow warned of retracing."""
    from tests.test_report import CLASS_NAMES, LANDMARKS, _landmark_batches
    data = _landmark_batches(count=24, batch_size=16)  # a full batch and a smaller last one
    performer, explainers = _landmark_explainers(5)
    geometries = evaluation.performer_geometries(performer)
    warnings = _Warnings()
    tf.get_logger().addHandler(warnings)
    try:
        for explainer in explainers:
            evaluation.evaluate(explainer, data, geometries, landmark_names=LANDMARKS)
        evaluation.evaluate(explainers[0], data, geometries)  # reuses its traced step
        report.write_report(explainers[-1], performer, data, str(tmp_path), CLASS_NAMES,
                            LANDMARKS, probe_images=2, per_filter=2, max_filters=2)
    finally:
        tf.get_logger().removeHandler(warnings)
    assert not [m for m in warnings.messages if "retracing" in m], warnings.messages
    steps = evaluation._STEPS[explainers[0]]  # one step for the one image shape, traced once
    assert len(steps) == 1 and next(iter(steps.values())).experimental_get_tracing_count() == 1


def test_filter_table_gives_offsets_spreads_and_instability_per_landmark():
    from tests.test_report import LANDMARKS, _landmark_batches
    data = _landmark_batches(count=32)
    performer, (explainer,) = _landmark_explainers(1)
    geometries = evaluation.performer_geometries(performer)
    result = evaluation.evaluate(explainer, data, geometries, landmark_names=LANDMARKS)
    collected = evaluation.collect(explainer, data)
    eligible = evaluation.filter_images(collected, "part_maps", explainer.negative_class)
    peaks = evaluation.peak_xy(collected, "part_maps", geometries["part_maps"])
    offsets = part_metrics.mean_offsets(peaks, collected.values["part_maps"],
                                        collected.landmarks, eligible)
    stability = evaluation.instability(collected, "part_maps", geometries["part_maps"],
                                       explainer.negative_class)
    rows = result["filters"]["explainer"]
    assert len(rows) == explainer.part_filters and "performer_top" in result["filters"]
    measured = 0
    for f, row in enumerate(rows):
        for k, name in enumerate(LANDMARKS):
            if row["offset"][name] is None:
                assert np.isnan(offsets[f, k]).all()
                continue
            np.testing.assert_allclose(row["offset"][name], offsets[f, k])
            spread = stability.per_filter_landmark[f, k] * np.hypot(32, 32)
            assert row["spread"][name] == (None if np.isnan(spread) else pytest.approx(spread))
            measured += 1
        instability = stability.per_filter[f]
        assert row["instability"] == (None if np.isnan(instability) else pytest.approx(instability))
    assert measured > 0
