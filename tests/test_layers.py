import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_explainer import templates
from tf_explainer.layers import ChannelNorm, PartMask, TrackFusion


def _maps(seed=0, shape=(3, 6, 6, 4)):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


@pytest.mark.parametrize("form", ["paper", "official"])
def test_part_mask_is_x_times_clamped_template_at_argmax(form):
    x = _maps()
    out = PartMask(form=form)(x).numpy()
    for b in range(x.shape[0]):
        for c in range(x.shape[3]):
            mu = np.unravel_index(np.argmax(x[b, :, :, c]), (6, 6))
            t = templates.unit_template(np.array([[mu]], np.float32), (6, 6), form).numpy()[0, ..., 0]
            np.testing.assert_allclose(out[b, :, :, c], x[b, :, :, c] * np.maximum(t, 0), atol=1e-6)
            assert out[b, mu[0], mu[1], c] == pytest.approx(x[b, mu[0], mu[1], c])  # peak 1, no tau


def test_part_mask_gradient_is_upstream_times_mask():
    x = tf.constant(_maps(1))
    upstream = tf.constant(_maps(2))
    layer = PartMask(centre="centroid")
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        objective = tf.reduce_sum(out * upstream)
    grad = tape.gradient(objective, x).numpy()
    mask = np.maximum(layer.template(x).numpy(), 0)
    np.testing.assert_allclose(grad, upstream.numpy() * mask, atol=1e-6)


def test_centroid_centre_is_the_rounded_activation_weighted_mean():
    x = np.zeros((1, 5, 5, 2), np.float32)
    x[0, 1, 1, 0] = 1.0
    x[0, 3, 3, 0] = 3.0   # centroid (2.5, 2.5): rounds half away from zero to (3, 3)
    x[0, 0, 0, 1] = 3.0
    x[0, 2, 1, 1] = 1.0   # centroid (0.5, 0.25) -> (1, 0)
    centres = PartMask(centre="centroid").centres(x).numpy()
    np.testing.assert_array_equal(centres[0], [[3, 3], [1, 0]])
    np.testing.assert_array_equal(PartMask().centres(x).numpy()[0], [[3, 3], [0, 0]])
    np.testing.assert_array_equal(PartMask(centre="centroid").centres(np.zeros_like(x)).numpy()[0],
                                  [[0, 0], [0, 0]])


def test_official_sharpness_moves_toward_target_in_training_only():
    layer = PartMask(form="official", sharpness_rate=0.5)
    x = np.zeros((3, 6, 6, 4), np.float32)
    x[:, 2, 3, :] = 1.0  # one active cell: spread 0, target clipped to 3
    positive = np.ones((3, 4), np.float32)
    layer(x, positive=positive, training=False)
    np.testing.assert_allclose(layer.sharpness.numpy(), 2.0)
    layer(x, positive=positive, training=True)
    np.testing.assert_allclose(layer.sharpness.numpy(), 2.5)  # 2 + 0.5 (3 - 2)
    layer(x, positive=np.zeros_like(positive), training=True)  # no positives: unchanged
    np.testing.assert_allclose(layer.sharpness.numpy(), 2.5)


def test_channel_norm_sigma_gets_the_reconstruction_gradient_unless_fixed():
    x = tf.constant(_maps(6))
    for learn, expect_gradient in ((True, True), (False, False)):
        norm = ChannelNorm(learn_sigma=learn)
        norm.build(x.shape)
        assert (norm.sigma in norm.trainable_variables) is expect_gradient
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(norm(x, training=True))
        if expect_gradient:
            grad = tape.gradient(out, norm.sigma)
            assert grad is not None and np.all(grad.numpy() < 0)  # larger sigma, smaller output


def test_channel_norm_updates_in_training_only_and_can_ignore_negatives():
    x = _maps(4)
    x[1] *= 100.0  # a negative image with huge activations
    positive = np.array([[1] * 4, [0] * 4, [1] * 4], np.float32)
    norm = ChannelNorm(momentum=0.5, positives_only=True)
    norm.build(x.shape)
    before = norm.sigma.numpy().copy()
    out = norm(x, positive=positive, training=False).numpy()
    np.testing.assert_allclose(norm.sigma.numpy(), before)
    np.testing.assert_allclose(out, x / (before + norm.epsilon), rtol=1e-6)
    norm(x, positive=positive, training=True)
    expected = 0.5 * before + 0.5 * x[[0, 2]].mean(axis=(1, 2)).mean(0)
    np.testing.assert_allclose(norm.sigma.numpy(), expected, rtol=1e-5)

    all_images = ChannelNorm(momentum=0.5, positives_only=False)
    all_images(x, positive=positive, training=True)
    assert np.all(all_images.sigma.numpy() > norm.sigma.numpy() * 10)


def test_track_fusion_starts_at_half_and_mixes():
    fusion = TrackFusion()
    a, b = np.ones((2, 2, 2, 3), np.float32), np.zeros((2, 2, 2, 3), np.float32)
    np.testing.assert_allclose(fusion([a, b]).numpy(), 0.5)
    fusion.w_interp.assign(np.log(3.0))
    assert float(fusion.p()) == pytest.approx(0.75)
    np.testing.assert_allclose(fusion([a, b]).numpy(), 0.75, rtol=1e-6)
    scaled = TrackFusion(logit_scale=10.0)
    scaled([a, b])
    scaled.w_interp.assign(np.log(3.0) / 10.0)
    assert float(scaled.p()) == pytest.approx(0.75)


@pytest.mark.parametrize("layer", [
    PartMask(form="official", centre="centroid", sharpness_init=2.5, sharpness_rate=0.2),
    PartMask(form="paper"),
    ChannelNorm(momentum=0.7, epsilon=1e-4, positives_only=True, learn_sigma=False),
    TrackFusion(logit_scale=50.0),
])
def test_layers_round_trip_get_config(layer):
    x = _maps(5)
    layer(x if not isinstance(layer, TrackFusion) else [x, x])
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == config
