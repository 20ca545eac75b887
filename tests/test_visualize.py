import numpy as np
import pytest
import tensorflow as tf

from tests.tiny import image_batches, tiny_performer
from tf_explainer import visualize
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.performers import ReceptiveField

GEOMETRY = ReceptiveField(stride=4.0, offset=1.5)  # cell i's centre: pixel 4 i + 1.5 -> 4 i + 2


def probe_batch(batch):
    """A tiny image batch with the uint8 "raw" images the pictures are drawn on."""
    raw = np.clip(batch["image"].numpy() * 255 / 3, 0, 255).astype(np.uint8)
    return {**batch, "raw": raw}


@pytest.fixture(scope="module")
def explainer():
    model = build_explainer(tiny_performer())
    initialize_statistics(model, image_batches(2))
    return model


def test_overlay_colours_only_where_the_strongest_map_peaks():
    raw = np.full((32, 32, 3), 128, np.uint8)
    maps = np.zeros((8, 8, 4), np.float32)
    maps[2, 5, 2] = 3.0  # strongest filter, cell centre at pixel (10, 22)
    maps[6, 1, 0] = 1.0  # weaker filter, not among the top 1
    out = visualize.overlay_part_maps(raw, maps, top_k=1)
    assert out.shape == raw.shape and out.dtype == np.uint8
    assert np.abs(out[10, 22].astype(int) - 128).max() > 30
    np.testing.assert_array_equal(out[26, 6], raw[26, 6])
    np.testing.assert_array_equal(out[0, 0], raw[0, 0])
    both = visualize.overlay_part_maps(raw, maps, top_k=2)
    assert np.abs(both[26, 6].astype(int) - 128).max() > 30
    assert not np.array_equal(both[10, 22], both[26, 6])  # distinct colours


def test_top_patches_take_the_highest_peaks_centred_on_the_receptive_field():
    rng = np.random.default_rng(0)
    raws = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    maps = np.zeros((5, 8, 8, 2), np.float32)
    peaks_0 = [1.0, 5.0, 3.0, 0.5, 4.0]
    cells_0 = [(0, 0), (3, 4), (0, 7), (1, 1), (5, 2)]
    for i, (value, (r, c)) in enumerate(zip(peaks_0, cells_0)):
        maps[i, r, c, 0] = value
    maps[3, 6, 6, 1] = 9.0
    patches = visualize.top_patches(raws, maps, GEOMETRY, patch_size=9, per_filter=3)
    assert patches.shape == (2, 3, 9, 9, 3) and patches.dtype == np.uint8
    half = 4
    for j, image in enumerate([1, 4, 2]):  # filter 0's images by peak value
        r, c = 4 * np.array(cells_0[image]) + 2
        np.testing.assert_array_equal(patches[0, j, half, half], raws[image, r, c])
        if image != 2:  # interior peaks: the whole patch lies inside the image
            np.testing.assert_array_equal(patches[0, j, 0, 0], raws[image, r - half, c - half])
    # Image 2 peaks at column 7 (pixel 30): the patch runs 4 pixels past the border, zero there.
    np.testing.assert_array_equal(patches[0, 2, :, -3:], 0)
    np.testing.assert_array_equal(patches[1, 0, half, half], raws[3, 26, 26])
    box = patches[0, 0, half - 2]  # the one-stride box's top edge
    assert (box[half - 2:half + 2] == [255, 255, 0]).all()


def test_patch_grid_puts_one_filter_per_row():
    patches = np.arange(2 * 3 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 4, 3)
    grid = visualize.patch_grid(patches)
    assert grid.shape == (8, 12, 3)
    np.testing.assert_array_equal(grid[4:8, 8:12], patches[1, 2])


def test_grad_cam_finds_the_known_hot_spot():
    """Linear global-average-pool classifier: class k's CAM is relu(sum_c W[c, k] map_c)."""
    maps = np.zeros((2, 4, 4, 2), np.float32)
    maps[:, 1, 2, 0] = 2.0
    maps[:, 3, 0, 1] = 1.0
    maps[1, 0, 0, 1] = 0.5
    weights = tf.constant([[1.0, -1.0], [-1.0, 1.0]])

    def model_fn(x):
        feature_map = tf.nn.relu(x)
        return feature_map, tf.reduce_mean(feature_map, axis=[1, 2]) @ weights

    cam = visualize.grad_cam(model_fn, maps, class_index=[0, 1])
    assert cam.shape == (2, 4, 4) and cam.dtype == np.float32
    expected_0 = np.zeros((4, 4))
    expected_0[1, 2] = 1.0
    np.testing.assert_allclose(cam[0], expected_0, atol=1e-6)
    expected_1 = np.zeros((4, 4))
    expected_1[3, 0], expected_1[0, 0] = 1.0, 0.5
    np.testing.assert_allclose(cam[1], expected_1, atol=1e-6)
    # None: each image's top class (class 0 for both: its channel carries more mass).
    np.testing.assert_allclose(visualize.grad_cam(model_fn, maps)[1, 1, 2], 1.0, atol=1e-6)


@pytest.mark.parametrize("pool_position", ["A", "B"])
def test_grad_cam_differentiates_the_models_own_scores(pool_position):
    """The replayed explainer tail and the cut performer give exactly the models' scores."""
    model = build_explainer(tiny_performer(), pool_position=pool_position)
    initialize_statistics(model, image_batches(1))
    features = model.features(next(iter(image_batches(1))))
    _, scores = visualize._explainer_part_maps_and_scores(model, features["target"])
    np.testing.assert_allclose(scores, model(features["target"])["scores"], atol=1e-6)
    from_top = visualize._performer_from_top(model.performer_taps)
    np.testing.assert_allclose(from_top(features["top"]), features["scores"], atol=1e-5)


def test_explainer_grad_cam_maps_are_normalised(explainer):
    images = next(iter(image_batches(1)))["image"]
    cams = visualize.explainer_grad_cam(explainer, images)
    assert set(cams) == {"explainer", "performer"}
    for cam in cams.values():
        assert cam.shape == (8, 8, 8) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
        assert np.isclose(cam.reshape(8, -1).max(1), 1).any()


def test_heatmap_overlay_is_red_where_hot_and_blue_where_cold():
    raw = np.zeros((16, 16, 3), np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    out = visualize.heatmap_overlay(raw, cam)
    assert out.shape == raw.shape and out.dtype == np.uint8
    assert out[0, 0, 0] > out[0, 0, 2] and out[15, 15, 2] > out[15, 15, 0]


def test_image_summaries_keys_and_shapes(explainer):
    batch = probe_batch(next(iter(image_batches(1))))
    images = visualize.image_summaries(explainer, batch, GEOMETRY, patch_size=8, per_filter=4,
                                       max_filters=5)
    assert images["part_overlay"].shape == (8, 32, 32, 3)
    assert images["top_patches"].shape == (1, 5 * 8, 4 * 8, 3)
    assert images["grad_cam"].shape == (8, 32, 64, 3)
    assert all(v.dtype == np.uint8 for v in images.values())
