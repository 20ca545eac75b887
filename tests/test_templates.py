import numpy as np
import pytest
import tensorflow as tf

from tf_explainer import templates


def _paper_reference(n, mu):
    tau = 0.5 / n ** 2
    t = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            t[i, j] = tau * max(1 - 4.0 * (abs(i - mu[0]) + abs(j - mu[1])) / n, -1)
    return t


def _official_reference(n, mu, a):
    coords = np.linspace(-1, 1, n)
    t = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d = abs(coords[i] - coords[mu[0]]) + abs(coords[j] - coords[mu[1]])
            t[i, j] = max(1 - a * d, -1)
    return t


@pytest.mark.parametrize("n", [3, 6, 7, 13])
def test_paper_templates_match_formula(n):
    rng = np.random.default_rng(n)
    centres = rng.integers(0, n, (4, 2))
    unit = templates.unit_template(centres[None].astype(np.float32), (n, n), "paper").numpy()[0]
    tau = templates.paper_tau(n, n)
    for c, mu in enumerate(centres):
        np.testing.assert_allclose(tau * unit[..., c], _paper_reference(n, mu), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n", [3, 6, 7, 13])
def test_official_templates_match_formula(n):
    rng = np.random.default_rng(n)
    centres = rng.integers(0, n, (4, 2))
    sharpness = np.array([1.5, 2.0, 2.5, 3.0], np.float32)
    unit = templates.unit_template(centres[None].astype(np.float32), (n, n), "official",
                                   sharpness).numpy()[0]
    for c, mu in enumerate(centres):
        np.testing.assert_allclose(unit[..., c], _official_reference(n, mu, sharpness[c]), atol=1e-6)


@pytest.mark.parametrize("n", [2, 5])
def test_template_bank_holds_every_centre_and_the_negative(n):
    bank = templates.template_bank(n, n).numpy()
    assert bank.shape == (n * n, n * n + 1)
    for k in range(n * n):
        np.testing.assert_allclose(bank[:, k].reshape(n, n), _paper_reference(n, divmod(k, n)), rtol=1e-5,
                                   atol=1e-9)
    np.testing.assert_allclose(bank[:, -1], -0.5 / n ** 2)


def test_unknown_form_is_rejected():
    with pytest.raises(ValueError, match="official"):
        templates.unit_template(tf.zeros([1, 1, 2]), (3, 3), "gaussian")
