"""The official-code form reproduces the authors' own mask layer and filter-loss gradient.

tests/data/icnn_conv_mask.npz holds inputs and outputs of the authors' layer (the PyTorch port
ada-shen/ICNN of their MATLAB code, run on CPU; docs/method.md says what each array is). Compared
with rtol 1e-4 and atol 0: the injected gradients are ~1e-6, so any absolute tolerance would pass
wrong code. The golden gradients are of a loss summed over the batch; ours is a batch mean, so
ours times the batch size must equal them.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_explainer import templates
from tf_explainer.filter_loss import approximate_filter_loss, filter_loss_scale
from tf_explainer.layers import PartMask, spread

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "icnn_conv_mask.npz"))
CASES = ("blobs", "relu", "blobs_x4", "sharp")


def _close(actual, name):
    np.testing.assert_allclose(actual, GOLDEN[name], rtol=1e-4, atol=0, err_msg=name)


def _mask(x):
    mask = PartMask(form="official", centre="centroid")
    mask.build(x.shape)
    return mask


def _positive(x):
    return np.broadcast_to(GOLDEN["positive"][:, None], (x.shape[0], x.shape[3])).astype(np.float32)


@pytest.mark.parametrize("case", CASES)
def test_forward_centres_and_spread(case):
    x = tf.constant(GOLDEN[f"{case}_x"])
    mask = _mask(x)
    _close(mask(x).numpy(), f"{case}_out")
    centres = mask.centres(x)
    n = x.shape[1]
    coords = np.linspace(-1, 1, n).astype(np.float32)
    cells = centres.numpy().astype(int)
    _close(coords[cells[..., 0]], f"{case}_mu_row")
    _close(coords[cells[..., 1]], f"{case}_mu_col")
    _close(spread(x, centres).numpy(), f"{case}_spread")


@pytest.mark.parametrize("case", CASES)
def test_sharpness_pseudo_gradient(case):
    x = tf.constant(GOLDEN[f"{case}_x"])
    _close(_mask(x).sharpness_pseudo_gradient(x, _positive(x)).numpy(), f"{case}_a_grad")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("epoch", [1, 3])
def test_injected_gradient_alone_and_with_upstream(case, epoch):
    x = tf.constant(GOLDEN[f"{case}_x"])
    upstream = tf.constant(GOLDEN["upstream"])
    batch = x.shape[0]
    mask = _mask(x)
    scale = filter_loss_scale(1.0, epoch)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        filter_term = scale * approximate_filter_loss(x, _positive(x), mask)
        task_term = tf.reduce_sum(upstream * mask(x)) / batch  # a batch-mean task loss
        total = filter_term + task_term
    _close(batch * tape.gradient(filter_term, x).numpy(), f"{case}_t{epoch}_injected")
    _close(batch * tape.gradient(total, x).numpy(),
           f"{case}_t{epoch}_grad_with_upstream")


def test_the_golden_comparison_can_fail():
    """Guards the tolerance: the paper form's weights or half the scale must not pass."""
    x = tf.constant(GOLDEN["blobs_x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = filter_loss_scale(0.5, 1) * approximate_filter_loss(x, _positive(x), _mask(x))
    half = x.shape[0] * tape.gradient(loss, x).numpy()
    with pytest.raises(AssertionError):
        _close(half, "blobs_t1_injected")
    paper = PartMask(form="paper", centre="centroid")
    with pytest.raises(AssertionError):
        _close(paper(x).numpy(), "blobs_out")
    assert templates.FORMS == ("paper", "official")
