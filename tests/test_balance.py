"""Loss balance, the kappa_t schedule and convergence, on the tiny performer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer import balance, training
from tf_explainer.build import build_explainer, initialize_statistics


def _explainer(**options):
    keras.utils.set_random_seed(0)
    explainer = build_explainer(tiny_performer(), **options)
    initialize_statistics(explainer, image_batches(2))
    return explainer


def test_calibrated_lambda_puts_the_ratio_where_asked_and_it_is_linear_in_lambda():
    explainer = _explainer(pool_position="B")
    batches = list(image_batches(2))
    at_one = balance.mean_gradient_ratios(explainer, batches, 1.0)
    weight = balance.calibrated_filter_loss_weight(explainer, batches, 1.0)
    calibrated = balance.mean_gradient_ratios(explainer, batches, weight)
    assert calibrated["grad_ratio_filter_conv_interp_2"] == pytest.approx(1.0, rel=1e-4)
    # Without calibration the authors' scale (kappa_0 = 1e-6) against our loss is far off balance.
    assert at_one["grad_ratio_filter_conv_interp_2"] < 0.1
    doubled = balance.mean_gradient_ratios(explainer, batches, 2 * weight)
    assert doubled["grad_ratio_filter_conv_interp_1"] == pytest.approx(
        2 * calibrated["grad_ratio_filter_conv_interp_1"], rel=1e-4)
    assert calibrated["grad_ratio_log_p_fusion"] > 0


def test_training_at_the_default_balance_logs_ratios_within_a_decade(tmp_path):
    explainer = _explainer(pool_position="B", eta=0.1)
    data = image_batches(3)
    batches = list(data.take(2))
    explainer.filter_loss_weight = balance.calibrated_filter_loss_weight(
        explainer, batches, balance.DEFAULT_BALANCE)
    logger = balance.GradientBalance(batches)
    history = training.train_explainer(explainer, data, data, str(tmp_path), epochs=2,
                                       optimizer=keras.optimizers.Adam(1e-4), verbose=0,
                                       callbacks=[logger])
    first = logger.history[0]
    assert 0.1 <= first["grad_ratio_filter_conv_interp_2"] <= 10
    for key in balance.RATIO_KEYS:
        assert len(history[key]) == 2 and np.all(np.isfinite(history[key]))


def test_filter_term_scale_follows_one_over_epoch():
    explainer = _explainer()
    data = image_batches(2)
    explainer.steps_per_epoch = 2
    explainer.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: only the step count moves
    batch = next(iter(data))
    first = explainer.gradient_norms(batch)["filter/conv_interp_2"]
    assert int(explainer.epoch()) == 1
    explainer.fit(data.repeat(), steps_per_epoch=4, epochs=1, verbose=0)
    assert int(explainer.epoch()) == 3
    third = explainer.gradient_norms(batch)["filter/conv_interp_2"]
    # The norms' and assignments' running statistics moved a little during those steps.
    assert float(third) == pytest.approx(float(first) / 3, rel=5e-3)


def test_convergence_stops_on_a_plateau_of_both_objective_and_p():
    stopper = training.Convergence("val_reconstruction", patience=2, min_delta=0.01, p_tolerance=0.01)
    model = keras.Sequential()
    model.stop_training = False
    stopper.set_model(model)
    logs = [(1.0, 0.50), (0.80, 0.60), (0.799, 0.65), (0.798, 0.70), (0.797, 0.702), (0.797, 0.703)]
    for epoch, (value, p) in enumerate(logs):
        stopper.on_epoch_end(epoch, {"val_reconstruction": value, "p": p})
        if stopper.model.stop_training:
            break
    # The objective is flat from epoch 3 on, but p only settles at epoch 6.
    assert stopper.converged_epoch == 6


def test_convergence_stops_when_the_objective_only_gets_worse_while_p_drifts():
    stopper = training.Convergence("val_reconstruction", patience=2)
    model = keras.Sequential()
    model.stop_training = False
    stopper.set_model(model)
    for epoch in range(10):
        stopper.on_epoch_end(epoch, {"val_reconstruction": 1.0 + 0.1 * epoch, "p": 0.5 + 0.05 * epoch})
        if model.stop_training:
            break
    assert stopper.converged_epoch == 5  # best at epoch 1, then 2 x patience without improvement


def test_the_classification_baseline_learns_labels_not_predictions():
    explainer = _explainer(objective="classification", category_source="label", eta=0.0)
    batch = explainer.features(next(iter(image_batches(1))))
    flipped = dict(batch, label=(batch["label"] + 1) % 3)
    outputs = explainer(batch["target"])
    a = explainer._per_image_objective(batch, outputs).numpy()
    b = explainer._per_image_objective(flipped, outputs).numpy()
    assert not np.allclose(a, b)
    expected = keras.losses.sparse_categorical_crossentropy(batch["label"], outputs["scores"],
                                                            from_logits=True).numpy()
    np.testing.assert_allclose(a, expected, rtol=1e-6)


@pytest.mark.parametrize("pool_position", ["A", "B"])
def test_conv_interp_2_loss_is_on_the_fused_tensor_and_reaches_only_masked_cells(pool_position):
    explainer = _explainer(pool_position=pool_position)
    batch = explainer.features(next(iter(image_batches(1))))
    positive = explainer.positives(explainer.image_categories(batch))
    with tf.GradientTape() as tape:
        outputs = explainer(batch["target"], positive=positive)
        _, filter_2 = explainer.filter_terms(outputs, positive)
    p = outputs["p"]
    np.testing.assert_allclose(outputs["fused_interp"].numpy(),
                               (p * outputs["x_interp"] + (1 - p) * outputs["x_ordin"]).numpy(),
                               rtol=1e-5, atol=1e-6)
    if pool_position == "B":
        pooled = explainer.pool_interp(outputs["part_maps"])
        np.testing.assert_array_equal(outputs["centres_2"].numpy(),
                                      explainer.mask_2.centres(pooled).numpy())
    gradient = tape.gradient(filter_2, outputs["part_maps"]).numpy()
    if pool_position == "A":
        mask = np.maximum(explainer.mask_2.template(outputs["part_maps"]).numpy(), 0)
        assert np.all(gradient[mask == 0] == 0) and np.abs(gradient).max() > 0
    else:
        assert np.abs(gradient).max() > 0
