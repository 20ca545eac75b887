import keras
import numpy as np
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer import evaluation
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
