"""Mixed precision: the explainer's convs and decoder compute in bfloat16/float16, its variables,
statistics, outputs and losses stay float32, float16 training scales the loss, and the global
policy is restored after building."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer import training
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.strategy import precision_policy

POLICIES = ("mixed_bfloat16", "mixed_float16")


def _explainer(policy, data):
    performer = tiny_performer()  # float32, as the tools load it: its features stay exact
    with precision_policy(policy):
        explainer = build_explainer(performer, eta=1.0, filter_loss_weight=0.5)
    initialize_statistics(explainer, data)
    return explainer


def _losses(explainer, batch):
    positive = explainer.positives(explainer.image_categories(batch))
    return explainer.compute_losses(batch, explainer(batch["target"], positive=positive), positive)


def test_precision_policy_restores_the_global_policy():
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with precision_policy("mixed_float16"):
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("none"):
        assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        with precision_policy("float8"):
            pass


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_trains_with_float32_variables_losses_and_outputs(policy, tmp_path):
    data = image_batches(2)
    explainer = _explainer(policy, data)
    compute = policy.split("_")[1]
    assert explainer.conv_interp_2.compute_dtype == explainer.decoder[0].compute_dtype == compute
    assert explainer.mask_2.compute_dtype == explainer.norm_interp.compute_dtype == "float32"
    batch = explainer.features(next(iter(data)))
    before = _losses(explainer, batch)
    assert {v.dtype.name for v in before.values()} == {"float32"}
    history = training.train_explainer(explainer, data.repeat(6), None, str(tmp_path), 1,
                                       keras.optimizers.Adam(3e-3), verbose=0)
    after = _losses(explainer, batch)
    assert all(np.isfinite(values).all() for values in history.values())
    assert float(after["loss"]) < float(before["loss"])
    assert {v.dtype for v in explainer.weights} == {"float32"}
    assert all(np.isfinite(v.numpy()).all() for v in explainer.weights)
    outputs = explainer(batch["target"])
    assert {outputs[k].dtype.name for k in ("part_maps", "interp_1", "ordin", "scores", "p")} == {"float32"}

    reloaded = keras.saving.load_model(tmp_path / training.EXPLAINER_FILE)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert reloaded.conv_interp_2.compute_dtype == compute  # the saved policy, not the global one
    assert type(reloaded.optimizer) is type(explainer.optimizer)  # reloads compiled
    for key in ("part_maps", "scores", "p"):
        np.testing.assert_array_equal(reloaded(batch["target"])[key].numpy(), outputs[key].numpy())


def test_mixed_float16_train_step_scales_the_loss():
    """One SGD step under loss scale 8 moves each weight by -lr * gradient: the step scaled the
    loss before the gradient and the optimizer unscaled it (without scaling it would be 1/8)."""
    data = image_batches(1)
    explainer = _explainer("mixed_float16", data)
    learning_rate = 1e-3
    # The default initial scale 2**15 overflows float16 here (gradients up to ~4e3); 8 does not.
    explainer.compile(optimizer=keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(learning_rate), initial_scale=8.0))
    batch = explainer.features(next(iter(data)))
    with tf.GradientTape() as tape:
        loss = _losses(explainer, batch)["loss"]
    gradients = tape.gradient(loss, explainer.trainable_variables)
    before = [v.numpy() for v in explainer.trainable_variables]
    explainer.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
    assert int(explainer.optimizer.iterations.numpy()) == 1  # finite gradients: the step was applied
    for variable, start, gradient in zip(explainer.trainable_variables, before, gradients):
        if variable.path.endswith("/sigma"):
            continue  # the norms' sigma also moves toward the batch statistic (layers.ChannelNorm)
        expected = -learning_rate * gradient.numpy()
        error = np.linalg.norm(variable.numpy() - start - expected)
        assert error <= 0.05 * np.linalg.norm(expected) + 1e-12, variable.path


def test_train_explainer_adds_loss_scaling_for_float16_layers(tmp_path):
    data = image_batches(2)
    explainer = _explainer("mixed_float16", data)
    training.train_explainer(explainer, data.repeat(8), None, str(tmp_path), 1,
                             keras.optimizers.SGD(1e-3), verbose=0)
    assert isinstance(explainer.optimizer, keras.optimizers.LossScaleOptimizer)
    # The initial scale 2**15 overflows here: those steps are skipped and the scale is lowered.
    assert float(explainer.optimizer.dynamic_scale.numpy()) < 2.0 ** 15
    assert 0 < int(explainer.optimizer.iterations.numpy()) < 16
    assert all(np.isfinite(v.numpy()).all() for v in explainer.weights)


def test_float16_layers_without_loss_scaling_are_a_clear_error():
    data = image_batches(1)
    explainer = _explainer("mixed_float16", data)
    explainer.compile(optimizer=keras.optimizers.SGD(1e-3))
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        explainer.fit(data, verbose=0)
