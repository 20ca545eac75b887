import keras
import numpy as np
import pytest

from tests.tiny import image_batches, tiny_performer
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import read_feature_cache, write_feature_cache


def _first_step_losses(explainer, batch):
    features = explainer.features(batch)
    positive = explainer.positives(explainer.image_categories(features))
    outputs = explainer(features["target"], training=False)
    return {k: float(v) for k, v in explainer.compute_losses(features, outputs, positive).items()}


@pytest.mark.parametrize("shards,compression", [(1, None), (3, "GZIP")])
def test_training_from_the_cache_sees_the_same_first_step_loss(tmp_path, shards, compression):
    keras.utils.set_random_seed(0)
    performer = tiny_performer()
    explainer = build_explainer(performer)
    images = image_batches(3, batch_size=8)
    initialize_statistics(explainer, images)
    description = write_feature_cache(performer.taps(), images, str(tmp_path), shards, compression)
    assert description["count"] == 24 and len(description["files"]) == shards
    cached = read_feature_cache(str(tmp_path)).batch(8)
    uncached_batch, cached_batch = next(iter(images)), next(iter(cached))
    np.testing.assert_array_equal(cached_batch["label"].numpy(), uncached_batch["label"].numpy())
    uncached_losses = _first_step_losses(explainer, uncached_batch)
    cached_losses = _first_step_losses(explainer, cached_batch)
    assert uncached_losses.keys() == cached_losses.keys()
    for key, value in uncached_losses.items():
        assert cached_losses[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    explainer.compile(optimizer="adam")
    history = explainer.fit(cached, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bfloat16_cache_is_close_and_smaller(tmp_path):
    performer = tiny_performer()
    images = image_batches(2, batch_size=8)
    write_feature_cache(performer.taps(), images, str(tmp_path / "f32"), shards=1)
    write_feature_cache(performer.taps(), images, str(tmp_path / "bf16"), shards=1, dtype="bfloat16")
    full = next(iter(read_feature_cache(str(tmp_path / "f32")).batch(16)))
    half = next(iter(read_feature_cache(str(tmp_path / "bf16")).batch(16)))
    assert half["target"].dtype == full["target"].dtype
    np.testing.assert_allclose(half["target"].numpy(), full["target"].numpy(), rtol=1e-2, atol=1e-2)
    size = lambda d: sum(p.stat().st_size for p in (tmp_path / d).glob("*.tfrecord"))  # noqa: E731
    assert size("bf16") < 0.7 * size("f32")


def test_missing_cache_and_bad_dtype_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache_features"):
        read_feature_cache(str(tmp_path))
    with pytest.raises(ValueError, match="bfloat16"):
        write_feature_cache(tiny_performer().taps(), image_batches(1), str(tmp_path), dtype="float16")
