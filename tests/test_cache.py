import json

import keras
import numpy as np
import pytest

from tests.tiny import image_batches, tiny_performer
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import SPEC_FILE, read_feature_cache, write_feature_cache


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
    cached = read_feature_cache(str(tmp_path), batch_size=8)
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


def test_a_training_step_from_the_cache_equals_one_from_images(tmp_path):
    """Same explainer state, one real train_step each: same loss (1e-5) and same updated weights."""
    keras.utils.set_random_seed(1)
    performer = tiny_performer()
    images = image_batches(1, batch_size=8)
    write_feature_cache(performer.taps(), images, str(tmp_path), shards=2)
    from_images, from_cache = build_explainer(performer), build_explainer(performer)
    initialize_statistics(from_images, images)
    from_cache.set_weights(from_images.get_weights())
    before = from_images.get_weights()
    logs = {}
    for name, explainer, data in (("images", from_images, images),
                                  ("cache", from_cache, read_feature_cache(str(tmp_path), 8))):
        explainer.compile(optimizer=keras.optimizers.SGD(0.1))
        explainer.make_train_function()
        logs[name] = {k: float(v) for k, v in explainer.train_function(iter(data)).items()}
    assert logs["images"]["loss"] != 0
    for key, value in logs["images"].items():
        assert logs["cache"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert any(not np.allclose(a, b) for a, b in zip(before, from_images.get_weights()))
    for a, b in zip(from_images.get_weights(), from_cache.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batched_reading_equals_single_examples_and_shuffling_is_a_seeded_permutation(tmp_path):
    performer = tiny_performer()
    write_feature_cache(performer.taps(), image_batches(3, batch_size=8), str(tmp_path), shards=3)
    single = next(iter(read_feature_cache(str(tmp_path)).batch(24)))
    batched = next(iter(read_feature_cache(str(tmp_path), batch_size=24)))
    assert single.keys() == batched.keys()
    for key in single:
        assert single[key].dtype == batched[key].dtype
        np.testing.assert_array_equal(single[key].numpy(), batched[key].numpy())
    assert batched["target"].shape == (24,) + tuple(performer.target_shape)

    def shuffled(seed):
        return next(iter(read_feature_cache(str(tmp_path), 24, shuffle_buffer=24, seed=seed)))

    first, again, other = shuffled(0), shuffled(0), shuffled(1)
    np.testing.assert_array_equal(first["target"].numpy(), again["target"].numpy())
    assert not np.array_equal(first["target"].numpy(), other["target"].numpy())
    order = np.argsort(first["scores"].numpy()[:, 0])
    np.testing.assert_array_equal(first["target"].numpy()[order],
                                  single["target"].numpy()[np.argsort(single["scores"].numpy()[:, 0])])


def test_drop_remainder_and_a_batch_larger_than_the_cache(tmp_path):
    write_feature_cache(tiny_performer().taps(), image_batches(2, batch_size=5), str(tmp_path))
    sizes = [int(b["label"].shape[0]) for b in read_feature_cache(str(tmp_path), 4)]
    assert sizes == [4, 4, 2]
    assert [int(b["label"].shape[0]) for b in read_feature_cache(str(tmp_path), 4,
                                                                 drop_remainder=True)] == [4, 4]
    assert [int(b["label"].shape[0]) for b in read_feature_cache(str(tmp_path), 64)] == [10]


def test_bfloat16_cache_is_close_and_smaller(tmp_path):
    performer = tiny_performer()
    images = image_batches(2, batch_size=8)
    write_feature_cache(performer.taps(), images, str(tmp_path / "f32"), shards=1)
    write_feature_cache(performer.taps(), images, str(tmp_path / "bf16"), shards=1, dtype="bfloat16")
    full = next(iter(read_feature_cache(str(tmp_path / "f32"), 16)))
    half = next(iter(read_feature_cache(str(tmp_path / "bf16"), 16)))
    assert half["target"].dtype == full["target"].dtype
    np.testing.assert_allclose(half["target"].numpy(), full["target"].numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(half["label"].numpy(), full["label"].numpy())
    size = lambda d: sum(p.stat().st_size for p in (tmp_path / d).glob("*.tfrecord"))  # noqa: E731
    assert size("bf16") < 0.7 * size("f32")


def test_missing_cache_old_format_and_bad_dtype_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache_features"):
        read_feature_cache(str(tmp_path))
    with pytest.raises(ValueError, match="bfloat16"):
        write_feature_cache(tiny_performer().taps(), image_batches(1), str(tmp_path), dtype="float16")
    (tmp_path / SPEC_FILE).write_text(json.dumps({"keys": {}, "count": 0, "files": [],
                                                  "compression": None}))
    with pytest.raises(ValueError, match="format 1.*rewrite it"):
        read_feature_cache(str(tmp_path))
