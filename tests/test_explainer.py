import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.explainer import Explainer
from tf_explainer.performers.spec import LayerNotFoundError, Performer


def _features(explainer, batches=2):
    return [explainer.features(b) for b in image_batches(batches)]


def _json(config):
    """Configs are JSON by contract: compare them as JSON (tuples and lists are the same)."""
    return json.dumps(config, sort_keys=True)


def test_conv_interp_2_filter_loss_gives_no_gradient_to_conv_ordin():
    explainer = build_explainer(tiny_performer(), eta=0.0)
    batch = _features(explainer)[0]
    positive = explainer.positives(explainer.image_categories(batch))
    with tf.GradientTape(persistent=True) as tape:
        outputs = explainer(batch["target"], positive=positive, training=False)
        losses = explainer.compute_losses(batch, outputs, positive)
    ordin = explainer.conv_ordin.trainable_variables
    for grad in tape.gradient(losses["filter_interp_2"], ordin):
        assert grad is None or np.all(grad.numpy() == 0)
    interp = tape.gradient(losses["filter_interp_2"], explainer.conv_interp_2.kernel)
    p_grad = tape.gradient(losses["filter_interp_2"], explainer.fusion.w_interp)
    assert np.abs(interp.numpy()).max() > 0 and abs(float(p_grad)) > 0
    # The reconstruction does train conv-ordin: the zero above is the stop-gradient, not a dead layer.
    assert np.abs(tape.gradient(losses["reconstruction"], explainer.conv_ordin.kernel).numpy()).max() > 0


def test_explainer_saves_and_reloads_as_keras_with_equal_outputs(tmp_path):
    explainer = build_explainer(tiny_performer(), template_form="official", pool_position="B")
    data = image_batches(2)
    initialize_statistics(explainer, data)
    explainer.compile(optimizer="adam")
    explainer.fit(data, epochs=1, verbose=0)
    path = tmp_path / "explainer.keras"
    explainer.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, Explainer)
    assert _json(reloaded.get_config()) == _json(explainer.get_config())
    x0 = explainer.features(next(iter(data)))["target"]
    a, b = explainer(x0), reloaded(x0)
    for key in ("part_maps", "scores", "p"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reloaded.norm_interp.sigma.numpy(), explainer.norm_interp.sigma.numpy())
    np.testing.assert_allclose(reloaded.assignment_2.numpy(), explainer.assignment_2.numpy())


def test_training_lowers_reconstruction_and_raises_p():
    keras.utils.set_random_seed(0)
    explainer = build_explainer(tiny_performer(), eta=5.0, filter_loss_weight=1e5)
    data = image_batches(4)
    initialize_statistics(explainer, data)
    explainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = explainer.evaluate(data, verbose=0, return_dict=True)
    explainer.fit(data.repeat(), steps_per_epoch=20, epochs=1, verbose=0)
    after = explainer.evaluate(data, verbose=0, return_dict=True)
    assert after["reconstruction"] < before["reconstruction"]
    assert after["p"] > before["p"] == pytest.approx(0.5)
    for term in ("filter_interp_1", "filter_interp_2", "log_p", "loss"):
        assert np.isfinite(after[term])


def test_without_eta_p_is_driven_by_the_data_only():
    keras.utils.set_random_seed(0)
    with_eta = build_explainer(tiny_performer(), eta=5.0, filter_loss="none")
    without = build_explainer(tiny_performer(), eta=0.0, filter_loss="none")
    data = image_batches(2)
    for model in (with_eta, without):
        initialize_statistics(model, data)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        model.fit(data.repeat(), steps_per_epoch=10, verbose=0)
    assert float(with_eta.fusion.p()) > float(without.fusion.p())


def test_label_category_source_and_filter_assignment():
    explainer = build_explainer(tiny_performer(), category_source="label")
    data = image_batches(2)
    batch = explainer.features(next(iter(data)))
    np.testing.assert_array_equal(explainer.image_categories(batch).numpy(), batch["label"].numpy())
    initialize_statistics(explainer, data)
    cat_1, cat_2 = explainer.filter_categories()
    s = explainer.assignment_2.numpy()
    np.testing.assert_array_equal(cat_2.numpy(), s.argmax(1))
    assert explainer.assignment_2.numpy().max() > 0


def test_negative_class_gets_no_filters():
    performer = tiny_performer(num_classes=2, class_names=["background", "bird"])
    explainer = build_explainer(performer)
    assert explainer.negative_class == 0
    explainer.assignment_1.assign(np.tile([[10.0, 1.0]], (explainer.interp_filters, 1)))
    assert np.all(explainer.filter_categories()[0].numpy() == 1)


def _train_three_steps(strategy, initial_weights):
    with strategy.scope():
        explainer = build_explainer(tiny_performer(), eta=1.0, filter_loss_weight=0.5)
        explainer.set_weights(initial_weights)
        explainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    data = image_batches(3, batch_size=8)
    explainer.fit(data, epochs=1, verbose=0, shuffle=False)
    return explainer.get_weights()


def test_mirrored_strategy_matches_one_device():
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    reference = build_explainer(tiny_performer(), eta=1.0, filter_loss_weight=0.5)
    initialize_statistics(reference, image_batches(2))
    initial = reference.get_weights()
    single = _train_three_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), initial)
    mirrored = _train_three_steps(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), initial)
    moved = max(np.abs(a - b).max() for a, b in zip(single, initial))
    assert moved > 1e-4
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bad_layer_names_list_available_layers():
    performer = tiny_performer()
    with pytest.raises(LayerNotFoundError, match="Available layers: .*relu4"):
        Performer(performer.model, "relu9", ["fc6"], ["fc8"], ["a"], None, (32, 32))
    with pytest.raises(LayerNotFoundError, match="Available layers: .*conv5"):
        Performer(performer.model, "relu4", ["fc6", "fc_missing"], ["fc8"], ["a"], None, (32, 32))
    with pytest.raises(LayerNotFoundError, match="not a 4-D feature map.*Available layers"):
        Performer(performer.model, "fc6", ["fc7"], ["fc8"], ["a"], None, (32, 32))
