"""Location instability of filters (official protocol of Zhang et al.; docs/method.md).

A filter that consistently fires on one object part keeps a fixed distance to every landmark of
the object, so the spread of those distances over the images where it fires most measures how
part-like it is. Everything here is plain numpy so it works on arrays gathered from any model.

Coordinates: cells are 0-based (row, col) grid indices; pixels are 0-based (x, y) in the input
image (the crop fed to the performer), and landmarks must already be mapped into that frame.
"""

import dataclasses
from typing import Optional, Sequence, Tuple, Union

import numpy as np

Geometry = Union[float, Sequence[float]]


@dataclasses.dataclass
class InstabilityResult:
    """Location instability, all values divided by the input diagonal sqrt(H^2 + W^2).

    `mean` averages `per_filter` over the `num_filters` filters that were evaluated; NaN marks a
    filter (in `per_filter`) or a filter/landmark pair (in `per_filter_landmark`) that was skipped.
    """
    mean: float
    per_filter: np.ndarray
    per_filter_landmark: np.ndarray
    num_filters: int


def map_peaks(maps) -> Tuple[np.ndarray, np.ndarray]:
    """Peak cell (row, col) [N, F, 2] and peak value [N, F] of each filter in maps [N, h, w, F].

    Ties go to the first cell in row-major order.
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"maps must be [N, h, w, F], got shape {maps.shape}")
    n, h, w, f = maps.shape
    flat = maps.reshape(n, h * w, f)
    index = flat.argmax(axis=1)
    values = np.take_along_axis(flat, index[:, None, :], axis=1)[:, 0, :]
    cells = np.stack(np.divmod(index, w), axis=-1)
    return cells, values


def project_cells(cells, stride: Geometry, offset: Geometry) -> np.ndarray:
    """Image pixels (x, y) of the centres of grid cells given as (row, col).

    The centre of cell i is at pixel offset + i * stride (0-based, i.e. the official 1-based c
    minus 1). stride and offset are scalars or (row, col) pairs, like Keras strides.
    """
    stride = np.broadcast_to(np.asarray(stride, dtype=np.float64), (2,))
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (2,))
    yx = offset + np.asarray(cells, dtype=np.float64) * stride
    return yx[..., ::-1]


def _diagonal(image_size) -> float:
    height, width = image_size
    return float(np.hypot(height, width))


def top_images(peak_values, eligible, landmark, top_k):
    """Each filter's top_k images by peak value among those eligible for it with the landmark
    annotated: (indices [top_k', F], counted [top_k', F] bool: the index is a real one).

    Only the set matters to the metrics, so a partition beats a full sort (equal peak values at
    the cut-off are broken arbitrarily). landmark: [N, 2] one landmark's (x, y), NaN if absent.
    """
    n = peak_values.shape[0]
    usable = eligible & ~np.isnan(landmark).any(axis=-1)[:, None]
    key = np.where(usable, -peak_values, np.inf)
    top = np.argpartition(key, min(top_k, n) - 1, axis=0)[:top_k]
    return top, np.take_along_axis(usable, top, axis=0)


def _distance_spread(peak_xy, peak_values, landmarks, eligible, top_k, min_images):
    """D_fk [F, K] in pixels: std (ddof=1) of peak-to-landmark distance over the top_k images.

    `eligible` [N, F] says which images may count for each filter (all of them, or its category's);
    an image also needs landmark k annotated. Pairs with fewer than min_images images are NaN.
    """
    f = peak_xy.shape[1]
    k_count = landmarks.shape[1]
    spread = np.full((f, k_count), np.nan)
    for k in range(k_count):  # K is a handful of landmarks; each step is vectorised over N and F.
        top, counted = top_images(peak_values, eligible, landmarks[:, k, :], top_k)
        chosen_xy = np.take_along_axis(peak_xy, top[..., None], axis=0)
        distance = np.linalg.norm(chosen_xy - landmarks[top, k, :], axis=-1)
        ok = counted.sum(axis=0) >= min_images
        if ok.any():
            spread[ok, k] = np.nanstd(np.where(counted, distance, np.nan)[:, ok], axis=0, ddof=1)
    return spread


def _summarise(spread, image_size, filter_mask) -> InstabilityResult:
    """Average D_fk over landmarks, then over filters, and normalise by the input diagonal."""
    spread = spread / _diagonal(image_size)
    if filter_mask is not None:
        spread[~np.asarray(filter_mask, dtype=bool)] = np.nan
    counted = ~np.isnan(spread)
    per_landmark_count = counted.sum(axis=1)
    per_filter = np.full(spread.shape[0], np.nan)
    used = per_landmark_count > 0
    per_filter[used] = np.where(counted, spread, 0.0).sum(axis=1)[used] / per_landmark_count[used]
    num_filters = int(used.sum())
    mean = float(per_filter[used].mean()) if num_filters else float("nan")
    return InstabilityResult(mean, per_filter, spread, num_filters)


def _check_inputs(peak_xy, peak_values, landmarks, top_k, min_images):
    peak_xy = np.asarray(peak_xy, dtype=np.float64)
    peak_values = np.asarray(peak_values, dtype=np.float64)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    n, f = peak_values.shape
    if peak_xy.shape != (n, f, 2):
        raise ValueError(f"peak_xy must be [N, F, 2] = {(n, f, 2)}, got {peak_xy.shape}")
    if landmarks.ndim != 3 or landmarks.shape[0] != n or landmarks.shape[2] != 2:
        raise ValueError(f"landmarks must be [N={n}, K, 2], got {landmarks.shape}")
    if min_images < 2:
        raise ValueError(f"min_images must be >= 2 for a standard deviation, got {min_images}")
    if top_k < min_images:
        raise ValueError(f"top_k ({top_k}) must be >= min_images ({min_images})")
    return peak_xy, peak_values, landmarks


def location_instability(peak_xy, peak_values, landmarks, image_size, top_k: int = 100,
                         min_images: int = 2, filter_mask=None) -> InstabilityResult:
    """Location instability of all filters evaluated on all images (single-category protocol).

    peak_xy [N, F, 2] projected peaks (x, y); peak_values [N, F]; landmarks [N, K, 2] (x, y), NaN
    where not annotated; image_size (H, W) of the input; filter_mask [F] bool limits the filters.
    """
    peak_xy, peak_values, landmarks = _check_inputs(
        peak_xy, peak_values, landmarks, top_k, min_images)
    eligible = np.ones(peak_values.shape, dtype=bool)
    spread = _distance_spread(peak_xy, peak_values, landmarks, eligible, top_k, min_images)
    return _summarise(spread, image_size, filter_mask)


def assign_filters_to_categories(peak_values, labels, num_classes: int,
                                 ignore_labels: Sequence[int] = ()) -> np.ndarray:
    """Category of each filter [F]: the class with the highest mean peak value over its images.

    ignore_labels (e.g. background) and classes without images are never chosen.
    """
    peak_values = np.asarray(peak_values, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    one_hot = labels[:, None] == np.arange(num_classes)[None, :]
    counts = one_hot.sum(axis=0)
    candidate = counts > 0
    candidate[list(ignore_labels)] = False
    if not candidate.any():
        raise ValueError("No category has images once ignore_labels are removed.")
    means = (one_hot.T.astype(np.float64) @ peak_values) / np.maximum(counts, 1)[:, None]
    means[~candidate] = -np.inf
    return means.argmax(axis=0)


def location_instability_on(peak_xy, peak_values, landmarks, image_size, eligible,
                            top_k: int = 100, min_images: int = 2) -> InstabilityResult:
    """Location instability with each filter measured on its own images (eligible [N, F])."""
    peak_xy, peak_values, landmarks = _check_inputs(
        peak_xy, peak_values, landmarks, top_k, min_images)
    spread = _distance_spread(peak_xy, peak_values, landmarks, np.asarray(eligible, bool), top_k,
                              min_images)
    return _summarise(spread, image_size, None)


def location_instability_by_category(peak_xy, peak_values, landmarks, labels, image_size,
                                     categories_of_filters, top_k: int = 100,
                                     min_images: int = 2, filter_mask=None) -> InstabilityResult:
    """Multi-category protocol: each filter is evaluated only on the images of its category."""
    peak_xy, peak_values, landmarks = _check_inputs(
        peak_xy, peak_values, landmarks, top_k, min_images)
    labels = np.asarray(labels).astype(np.int64)
    eligible = labels[:, None] == np.asarray(categories_of_filters)[None, :]
    spread = _distance_spread(peak_xy, peak_values, landmarks, eligible, top_k, min_images)
    return _summarise(spread, image_size, filter_mask)


def instability_of_maps(maps, landmarks, image_size, stride: Geometry, offset: Geometry,
                        labels=None, num_classes: Optional[int] = None, top_k: int = 100,
                        min_images: int = 2, filter_mask=None,
                        ignore_labels: Sequence[int] = ()) -> InstabilityResult:
    """Location instability straight from feature maps [N, h, w, F] of one layer.

    Without labels all images count for every filter; with labels (and num_classes, inferred from
    the labels when omitted) filters are assigned to categories first.
    """
    cells, values = map_peaks(maps)
    peak_xy = project_cells(cells, stride, offset)
    if labels is None:
        return location_instability(peak_xy, values, landmarks, image_size, top_k=top_k,
                                    min_images=min_images, filter_mask=filter_mask)
    labels = np.asarray(labels).astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    categories = assign_filters_to_categories(values, labels, num_classes, ignore_labels)
    return location_instability_by_category(peak_xy, values, landmarks, labels, image_size,
                                            categories, top_k=top_k, min_images=min_images,
                                            filter_mask=filter_mask)
