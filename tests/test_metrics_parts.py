"""Part coverage, duplicates and the fixed-point floor on constructed peaks."""

import numpy as np
import pytest

from tf_explainer.metrics import parts

SIZE = (64, 64)
N, K = 200, 4


def _landmarks(seed=0):
    """Four landmarks per image, spread over the image (objects at random places)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(16, 48, (N, 1, 2))
    offsets = np.array([[-12, -10], [-4, -4], [4, 2], [12, 10]], np.float64)[None]
    return centre + offsets + rng.normal(0, 1.0, (N, K, 2))


def _measure(peak_xy, values, landmarks):
    eligible = np.ones(values.shape, bool)
    return parts.part_measures(peak_xy, values, landmarks, eligible, SIZE)


def test_filters_that_track_every_landmark_cover_all_with_no_duplicates():
    landmarks = _landmarks()
    rng = np.random.default_rng(1)
    filters = 64
    peak_xy = landmarks[:, np.arange(filters) % K, :] + rng.normal(0, 0.5, (N, filters, 2))
    values = rng.uniform(0.5, 2.0, (N, filters))  # independent peak strengths
    result = _measure(peak_xy, values, landmarks)
    assert result.coverage == 1.0
    assert result.duplicates == 0.0
    np.testing.assert_array_equal(result.part, np.arange(filters) % K)
    assert result.filters_per_part(["a", "b", "c", "d"]) == {"a": 16, "b": 16, "c": 16, "d": 16,
                                                              "none": 0}


def test_copies_of_one_detector_cover_one_landmark_and_are_all_duplicates():
    landmarks = _landmarks()
    rng = np.random.default_rng(2)
    peak_xy = np.repeat(landmarks[:, 2:3, :], 64, axis=1)
    strength = rng.uniform(0.5, 2.0, (N, 1))
    values = strength * rng.uniform(0.99, 1.01, (N, 64))
    result = _measure(peak_xy, values, landmarks)
    assert result.coverage == 0.25
    assert result.duplicates == 1.0
    assert set(result.part.tolist()) == {2}


def test_a_filter_fixed_at_one_pixel_detects_nothing():
    landmarks = _landmarks()
    rng = np.random.default_rng(3)
    peak_xy = np.broadcast_to(np.array([32.0, 32.0]), (N, 1, 2))
    values = rng.uniform(0.5, 2.0, (N, 1))
    result = _measure(peak_xy, values, landmarks)
    assert result.coverage == 0.0 and result.duplicates == 0.0
    assert result.part.tolist() == [-1]
    # The best fixed pixel does as well as this one, so no margin is left for a detection.
    assert np.all(result.fixed[0] >= result.hit[0])


def test_a_tracker_of_a_landmark_that_never_moves_is_no_detector():
    """On aligned crops a pixel hits as often as the filter: the margin rule rejects it."""
    landmarks = np.broadcast_to(np.array([20.0, 30.0]), (N, 1, 2)).copy()
    peak_xy = landmarks.copy()
    values = np.random.default_rng(4).uniform(0.5, 2.0, (N, 1))
    result = _measure(peak_xy, values, landmarks)
    assert result.hit[0, 0] == 1.0 and result.fixed[0, 0] == 1.0
    assert result.coverage == 0.0


def test_dead_filters_count_as_duplicates():
    landmarks = _landmarks()
    rng = np.random.default_rng(5)
    peak_xy = landmarks[:, [0, 1], :]
    values = rng.uniform(0.5, 2.0, (N, 2))
    values[: int(0.95 * N), 1] = 0.0
    result = _measure(peak_xy, values, landmarks)
    assert result.dead.tolist() == [False, True]
    assert result.duplicates == 0.5


def test_twins_only_within_a_category():
    rng = np.random.default_rng(6)
    values = rng.uniform(0.5, 2.0, (N, 1)) * np.ones((1, 3))
    eligible = np.ones((N, 3), bool)
    eligible[: N // 2, 2] = False
    twins, dead = parts.twins_and_dead(values, eligible)
    assert twins == [[1], [0], []] and not dead.any()


def test_best_pixel_hits_counts_points_within_the_radius():
    points = np.array([[10.0, 10.0], [12.0, 10.0], [40.0, 40.0], [10.0, 13.0]])
    assert parts.best_pixel_hits([points], SIZE, radius=3.0)[0] == pytest.approx(0.75)
    assert np.isnan(parts.best_pixel_hits([np.zeros((0, 2))], SIZE, radius=3.0)[0])


def test_fixed_point_instability_is_zero_for_fixed_landmarks_and_grows_with_motion():
    still = np.broadcast_to(np.array([[20.0, 30.0], [40.0, 10.0]]), (N, 2, 2))
    assert parts.fixed_point_instability(still, SIZE) == pytest.approx(0.0, abs=1e-9)
    moving = _landmarks()
    floor = parts.fixed_point_instability(moving, SIZE)
    assert 0.01 < floor < 0.3
    # A fixed "filter" cannot beat its own best pixel: any single pixel scores at least the floor.
    corner = np.linalg.norm(moving - np.array([0.0, 0.0]), axis=-1).std(axis=0, ddof=1).mean()
    assert corner / np.hypot(*SIZE) >= floor


def test_mean_offsets_give_where_the_peak_sits_relative_to_each_landmark():
    landmarks = _landmarks()
    rng = np.random.default_rng(7)
    shift = np.array([[3.0, -2.0], [-5.0, 4.0]])  # filter j fires at landmark 1 plus shift[j]
    peak_xy = landmarks[:, [1, 1], :] + shift[None]
    values = rng.uniform(0.5, 2.0, (N, 2))
    landmarks[: N // 2, 3] = np.nan  # landmark 3 is missing on half the images
    eligible = np.ones(values.shape, bool)
    offset = parts.mean_offsets(peak_xy, values, landmarks, eligible, top_k=50)
    assert offset.shape == (2, K, 2)
    np.testing.assert_allclose(offset[:, 1], shift, atol=1e-9)
    # Relative to landmark 0 the offset is the (mean) landmark-0-to-1 vector plus the shift,
    # taken over each filter's own 50 strongest images.
    for j in range(2):
        top = np.argsort(-values[:, j])[:50]
        expected = (landmarks[top, 1] - landmarks[top, 0]).mean(axis=0) + shift[j]
        np.testing.assert_allclose(offset[j, 0], expected, atol=1e-9)
        usable = np.flatnonzero(~np.isnan(landmarks[:, 3, 0]))
        top = usable[np.argsort(-values[usable, j])[:50]]
        expected = (landmarks[top, 1] - landmarks[top, 3]).mean(axis=0) + shift[j]
        np.testing.assert_allclose(offset[j, 3], expected, atol=1e-9)
    result = parts.part_measures(peak_xy, values, landmarks, eligible, SIZE, top_k=50)
    np.testing.assert_allclose(result.offset, offset)
    assert np.isnan(parts.mean_offsets(peak_xy, values, landmarks, np.zeros_like(eligible))).all()
