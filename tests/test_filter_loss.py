import numpy as np
import pytest
import tensorflow as tf

from tf_explainer import filter_loss, templates
from tf_explainer.layers import PartMask


def _exact_grad(x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = filter_loss.exact_mutual_information(x)
    return loss.numpy(), tape.gradient(loss, x).numpy()


def test_exact_gradient_matches_finite_differences_float64():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 40, (5, 3, 3, 2))
    _, grad = _exact_grad(x)
    eps = 1e-5
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (filter_loss.exact_mutual_information(tf.constant(up)).numpy()
                          - filter_loss.exact_mutual_information(tf.constant(down)).numpy()) / (2 * eps)
    assert np.abs(grad).max() > 1e-4  # the check is not vacuous
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def test_exact_gradient_matches_closed_form():
    """dLoss/dx_ij = -sum_T p(T) t_ij p(x|T) [log(p(x|T)/p(x)) - KL_T]."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 30, (4, 3, 3, 1))
    _, grad = _exact_grad(x)
    bank = templates.template_bank(3, 3, tf.float64).numpy()  # [P, T]
    flat = x[..., 0].reshape(4, 9)
    logits = flat @ bank
    log_pxt = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    prior = 1.0 / bank.shape[1]
    log_px = np.log((prior * np.exp(log_pxt)).sum(1, keepdims=True))
    ratio = log_pxt - log_px
    kl = (np.exp(log_pxt) * ratio).sum(0, keepdims=True)
    expected = -(prior * np.exp(log_pxt) * (ratio - kl)) @ bank.T
    np.testing.assert_allclose(grad[..., 0].reshape(4, 9), expected, rtol=1e-8, atol=1e-12)


def test_exact_loss_is_zero_for_identical_images_and_negative_for_distinct_parts():
    same = np.tile(np.random.default_rng(2).uniform(0, 5, (1, 4, 4, 2)), (6, 1, 1, 1))
    assert filter_loss.exact_mutual_information(tf.constant(same)).numpy() == pytest.approx(0, abs=1e-9)
    parts = np.zeros((16, 4, 4, 1))
    for k in range(16):
        parts[k, k // 4, k % 4, 0] = 500.0
    assert filter_loss.exact_mutual_information(tf.constant(parts)).numpy() < -0.1


@pytest.mark.parametrize("scale", [0.0, 1e4, 1e30])
def test_exact_loss_and_gradient_are_finite(scale):
    x = np.random.default_rng(3).uniform(0, 1, (4, 5, 5, 3)).astype(np.float32) * scale
    loss, grad = _exact_grad(x)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def _approx_grad(x, positive, form):
    x = tf.constant(x, tf.float32)
    mask = PartMask(form=form)
    mask.build(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = filter_loss.approximate_filter_loss(x, tf.constant(positive, tf.float32), mask)
    return loss.numpy(), tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("form", ["paper", "official"])
@pytest.mark.parametrize("scale", [0.0, 1e4])
def test_approximate_gradient_is_finite(form, scale):
    x = np.random.default_rng(4).uniform(0, 1, (6, 7, 7, 3)) * scale
    positive = np.array([[1, 1, 0]] * 3 + [[0, 1, 1]] * 3)
    loss, grad = _approx_grad(x, positive, form)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    if scale:
        assert np.abs(grad).max() > 0


@pytest.mark.parametrize("form", ["paper", "official"])
def test_approximate_gradient_raises_positive_peaks_and_lowers_negatives(form):
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 0.5, (8, 7, 7, 2))
    for b in range(8):
        r, c = rng.integers(1, 6, 2)
        x[b, r, c, :] += 2.0
    positive = np.array([[1, 1]] * 4 + [[0, 0]] * 4)
    _, grad = _approx_grad(x, positive, form)
    stepped = np.maximum(x - 0.5 * grad, 0)
    peaks_before, peaks_after = x.max(axis=(1, 2)), stepped.max(axis=(1, 2))
    assert np.all(peaks_after[:4] > peaks_before[:4])
    assert np.all(stepped[4:].mean(axis=(1, 2)) < x[4:].mean(axis=(1, 2)))


def test_registry_and_pluggable_callable():
    assert {"approximate", "exact", "none"} <= set(filter_loss.registered_filter_losses())
    custom = lambda maps, positive, mask: tf.reduce_mean(maps)  # noqa: E731
    assert filter_loss.get_filter_loss(custom) is custom
    with pytest.raises(ValueError, match="registered"):
        filter_loss.get_filter_loss("no-such-loss")
