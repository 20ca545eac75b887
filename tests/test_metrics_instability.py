"""Location instability: geometry, the top_k/NaN/min_images protocol, ddof=1 and categories."""

import numpy as np
import pytest

from tf_explainer import metrics

STRIDE, OFFSET, GRID = 4, 1.5, 12
IMAGE_SIZE = (GRID * STRIDE, GRID * STRIDE)
# The eight rotations/flips of the grid keep every landmark-to-landmark distance, so a filter
# locked onto one landmark keeps a constant distance to all of them while the object moves.
DIHEDRAL = np.array([[[a, 0], [0, b]] for a in (1, -1) for b in (1, -1)]
                    + [[[0, a], [b, 0]] for a in (1, -1) for b in (1, -1)])


def _cell_centres(cells, stride=STRIDE, offset=OFFSET):
    """(row, col) cells -> (x, y) pixels, written out independently of project_cells."""
    cells = np.asarray(cells, dtype=np.float64)
    return np.stack([offset + cells[..., 1] * stride, offset + cells[..., 0] * stride], axis=-1)


def _moving_object(rng, n, num_filters=4):
    """Maps [N, GRID, GRID, F] whose filter f peaks on landmark f % 3 of a randomly moved object.

    Returns (maps, landmark_cells [N, 3, 2] as (row, col)).
    """
    parts = np.array([[0, 0], [2, 1], [-1, 2]])
    turn = DIHEDRAL[rng.integers(len(DIHEDRAL), size=n)]
    anchor = rng.integers(2, GRID - 2, size=(n, 1, 2))
    landmark_cells = anchor + np.einsum("nij,kj->nki", turn, parts)
    maps = rng.uniform(0.0, 0.5, size=(n, GRID, GRID, num_filters))
    for f in range(num_filters):
        row, col = landmark_cells[:, f % 3].T
        maps[np.arange(n), row, col, f] = 1.0 + rng.uniform(size=n)
    return maps, landmark_cells


def _noisy_xy(rng, shape):
    return rng.uniform(0, IMAGE_SIZE[0], size=shape + (2,))


def test_map_peaks_finds_row_col_and_value():
    maps = np.zeros((2, 3, 5, 2))
    maps[0, 1, 4, 0] = 7.0
    maps[0, 2, 0, 1] = 3.0
    maps[1, 0, 3, 0] = 5.0
    maps[1, 2, 2, 1] = 1.0
    cells, values = metrics.map_peaks(maps)
    np.testing.assert_array_equal(cells, [[[1, 4], [2, 0]], [[0, 3], [2, 2]]])
    np.testing.assert_array_equal(values, [[7.0, 3.0], [5.0, 1.0]])


def test_project_cells_is_exact_and_returns_xy():
    cells = np.array([[[0, 0], [2, 5], [6, 1]]])
    xy = metrics.project_cells(cells, stride=4, offset=1.5)
    np.testing.assert_array_equal(xy, [[[1.5, 1.5], [21.5, 9.5], [5.5, 25.5]]])
    # (row, col) geometry pairs apply to the matching axis of the cell.
    np.testing.assert_array_equal(
        metrics.project_cells([[2, 5]], stride=(4, 2), offset=(1.0, 0.5)), [[10.5, 9.0]])


def test_peak_locked_on_landmark_scores_zero():
    rng = np.random.default_rng(0)
    maps, landmark_cells = _moving_object(rng, 60)
    result = metrics.instability_of_maps(maps, _cell_centres(landmark_cells), IMAGE_SIZE,
                                         STRIDE, OFFSET)
    assert result.num_filters == 4
    assert result.mean < 1e-6
    assert np.all(result.per_filter_landmark < 1e-6)


def test_peaks_shuffled_across_images_score_high():
    rng = np.random.default_rng(1)
    maps, landmark_cells = _moving_object(rng, 60)
    shuffled = maps[np.roll(np.arange(60), 1)]
    result = metrics.instability_of_maps(shuffled, _cell_centres(landmark_cells), IMAGE_SIZE,
                                         STRIDE, OFFSET)
    assert result.mean > 0.1


def test_wrong_geometry_is_not_stable():
    rng = np.random.default_rng(2)
    maps, landmark_cells = _moving_object(rng, 60)
    landmarks = _cell_centres(landmark_cells)
    right = metrics.instability_of_maps(maps, landmarks, IMAGE_SIZE, STRIDE, OFFSET)
    raw_cells = metrics.instability_of_maps(maps, landmarks, IMAGE_SIZE, 1, 0)
    assert right.mean < 1e-6
    assert raw_cells.mean > 0.05


def test_only_top_k_activations_count():
    rng = np.random.default_rng(3)
    n, strong = 40, 10
    landmarks = _noisy_xy(rng, (n, 1))
    peak_xy = landmarks.copy()
    peak_xy[strong:] = _noisy_xy(rng, (n - strong, 1))
    values = np.concatenate([rng.uniform(5, 6, strong), rng.uniform(0, 1, n - strong)])[:, None]
    order = rng.permutation(n)
    peak_xy, values, landmarks = peak_xy[order], values[order], landmarks[order]
    top = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, top_k=strong)
    everything = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, top_k=n)
    assert top.mean < 1e-9
    assert everything.mean > 0.05


def test_unannotated_landmarks_are_ignored_even_with_top_activations():
    rng = np.random.default_rng(4)
    n = 30
    landmarks = _noisy_xy(rng, (n, 1))
    peak_xy = _noisy_xy(rng, (n, 1))
    values = rng.uniform(0, 1, (n, 1))
    # The strongest images lack the landmark; the next five are exact; the rest are noise.
    values[:5] += 10
    landmarks[:5] = np.nan
    values[5:10] += 5
    peak_xy[5:10] = landmarks[5:10]
    result = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, top_k=5)
    assert result.num_filters == 1
    assert result.mean < 1e-9


def test_pairs_with_too_few_images_are_skipped():
    rng = np.random.default_rng(5)
    n = 12
    landmarks = _noisy_xy(rng, (n, 3))
    landmarks[2:, 1] = np.nan  # landmark 1: two images
    landmarks[:, 2] = np.nan   # landmark 2: none
    peak_xy = _noisy_xy(rng, (n, 2))
    values = rng.uniform(size=(n, 2))
    result = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, min_images=3)
    assert np.all(np.isfinite(result.per_filter_landmark[:, 0]))
    assert np.all(np.isnan(result.per_filter_landmark[:, 1:]))
    np.testing.assert_allclose(result.per_filter, result.per_filter_landmark[:, 0])

    relaxed = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, min_images=2)
    assert np.all(np.isfinite(relaxed.per_filter_landmark[:, 1]))
    np.testing.assert_allclose(relaxed.per_filter,
                               relaxed.per_filter_landmark[:, :2].mean(axis=1))

    only_landmark_1 = landmarks.copy()
    only_landmark_1[:, 0] = np.nan
    none_left = metrics.location_instability(peak_xy, values, only_landmark_1, IMAGE_SIZE,
                                             min_images=3)
    assert none_left.num_filters == 0
    assert np.all(np.isnan(none_left.per_filter)) and np.isnan(none_left.mean)


def test_hand_computed_example_uses_ddof_1():
    # Distances 0, 3 and 4 to a landmark at the origin; input 3 x 4 has diagonal 5.
    peak_xy = np.array([[[0.0, 0.0]], [[3.0, 0.0]], [[0.0, 4.0]]])
    landmarks = np.zeros((3, 1, 2))
    result = metrics.location_instability(peak_xy, np.ones((3, 1)), landmarks, (3, 4))
    expected = np.sqrt(13.0 / 3.0) / 5.0  # mean 7/3, squared deviations sum 26/3, over N-1 = 2
    assert result.mean == pytest.approx(expected, rel=1e-12)
    assert result.per_filter[0] == pytest.approx(expected, rel=1e-12)


def test_mean_averages_landmarks_then_filters_and_respects_filter_mask():
    rng = np.random.default_rng(6)
    n = 20
    landmarks = _noisy_xy(rng, (n, 2))
    peak_xy = np.stack([landmarks[:, 0], _noisy_xy(rng, (n,))], axis=1)
    values = rng.uniform(size=(n, 2))
    one_landmark = landmarks[:, :1]
    full = metrics.location_instability(peak_xy, values, one_landmark, IMAGE_SIZE)
    assert full.per_filter[0] < 1e-9 < full.per_filter[1]
    assert full.mean == pytest.approx(full.per_filter.mean())
    masked = metrics.location_instability(peak_xy, values, one_landmark, IMAGE_SIZE,
                                          filter_mask=np.array([True, False]))
    assert masked.num_filters == 1 and masked.mean < 1e-9 and np.isnan(masked.per_filter[1])
    two = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE)
    np.testing.assert_allclose(two.per_filter, np.nanmean(two.per_filter_landmark, axis=1))


def test_filters_are_assigned_to_the_category_with_highest_mean_peak():
    labels = np.array([0, 0, 0, 1, 2, 2])
    # Filter 0 wins category 0 by sum but 1 by mean; filter 1 wins 0 by max but 2 by mean.
    values = np.array([[3, 0, 5],
                       [3, 0, 5],
                       [3, 9, 5],
                       [4, 1, 1],
                       [0, 4, 3],
                       [0, 4, 1]], dtype=float)
    np.testing.assert_array_equal(
        metrics.assign_filters_to_categories(values, labels, 3), [1, 2, 0])
    # Ignoring category 0 (e.g. background) moves filter 2 to its next best category.
    np.testing.assert_array_equal(
        metrics.assign_filters_to_categories(values, labels, 3, ignore_labels=(0,)), [1, 2, 2])
    # A category without images is never chosen, even when every real mean is negative.
    np.testing.assert_array_equal(
        metrics.assign_filters_to_categories(values - 10, labels, 4), [1, 2, 0])


def test_by_category_uses_only_the_filters_category():
    rng = np.random.default_rng(7)
    n = 40
    labels = np.repeat([0, 1], n // 2)
    landmarks = _noisy_xy(rng, (n, 1))
    peak_xy = landmarks.copy()
    peak_xy[labels == 0] = _noisy_xy(rng, (n // 2, 1))
    # Category 0 fires harder, so its noisy images would win the top_k if they were allowed in.
    values = np.where(labels == 0, 5.0, 1.0)[:, None] + rng.uniform(size=(n, 1))
    by_category = metrics.location_instability_by_category(
        peak_xy, values, landmarks, labels, IMAGE_SIZE, categories_of_filters=np.array([1]),
        top_k=10)
    pooled = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, top_k=10)
    assert by_category.mean < 1e-9
    assert pooled.mean > 0.05


def test_instability_of_maps_by_category_matches_the_steps():
    rng = np.random.default_rng(8)
    maps, landmark_cells = _moving_object(rng, 50, num_filters=3)
    labels = rng.integers(0, 3, size=50)
    maps[labels == 2] = rng.uniform(size=(int((labels == 2).sum()), GRID, GRID, 3)) * 3
    landmarks = _cell_centres(landmark_cells)
    result = metrics.instability_of_maps(maps, landmarks, IMAGE_SIZE, STRIDE, OFFSET,
                                         labels=labels, num_classes=3, top_k=20,
                                         ignore_labels=(2,))
    cells, values = metrics.map_peaks(maps)
    categories = metrics.assign_filters_to_categories(values, labels, 3, ignore_labels=(2,))
    assert not np.any(categories == 2)
    expected = metrics.location_instability_by_category(
        metrics.project_cells(cells, STRIDE, OFFSET), values, landmarks, labels, IMAGE_SIZE,
        categories, top_k=20)
    assert result.mean < 1e-6
    assert result.mean == expected.mean
    np.testing.assert_array_equal(result.per_filter_landmark, expected.per_filter_landmark)


def _reference(peak_xy, values, landmarks, image_size, top_k, eligible):
    """The protocol written as plain loops, to check the vectorised version against."""
    spread = np.full((values.shape[1], landmarks.shape[1]), np.nan)
    for f in range(values.shape[1]):
        for k in range(landmarks.shape[1]):
            images = np.flatnonzero(eligible[:, f] & ~np.isnan(landmarks[:, k, 0]))
            images = images[np.argsort(-values[images, f])[:top_k]]
            if len(images) >= 2:
                distance = np.linalg.norm(peak_xy[images, f] - landmarks[images, k], axis=-1)
                spread[f, k] = np.std(distance, ddof=1)
    return spread / np.hypot(*image_size)


def test_matches_plain_loop_reference_on_random_data():
    rng = np.random.default_rng(9)
    n, num_filters = 80, 6
    peak_xy = _noisy_xy(rng, (n, num_filters))
    values = rng.normal(size=(n, num_filters))
    landmarks = _noisy_xy(rng, (n, 3))
    landmarks[rng.uniform(size=(n, 3)) < 0.4] = np.nan
    labels = rng.integers(0, 3, size=n)
    categories = rng.integers(0, 3, size=num_filters)
    single = metrics.location_instability(peak_xy, values, landmarks, IMAGE_SIZE, top_k=15)
    np.testing.assert_allclose(
        single.per_filter_landmark,
        _reference(peak_xy, values, landmarks, IMAGE_SIZE, 15, np.ones_like(values, bool)),
        rtol=1e-12)
    by_category = metrics.location_instability_by_category(
        peak_xy, values, landmarks, labels, IMAGE_SIZE, categories, top_k=15)
    np.testing.assert_allclose(
        by_category.per_filter_landmark,
        _reference(peak_xy, values, landmarks, IMAGE_SIZE, 15, labels[:, None] == categories),
        rtol=1e-12)


def test_invalid_arguments_are_rejected():
    xy, values, landmarks = np.zeros((3, 2, 2)), np.zeros((3, 2)), np.zeros((3, 1, 2))
    with pytest.raises(ValueError, match="min_images"):
        metrics.location_instability(xy, values, landmarks, IMAGE_SIZE, min_images=1)
    with pytest.raises(ValueError, match="peak_xy"):
        metrics.location_instability(xy[:, :1], values, landmarks, IMAGE_SIZE)
    with pytest.raises(ValueError, match="maps"):
        metrics.map_peaks(np.zeros((3, 4, 4)))
