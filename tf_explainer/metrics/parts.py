"""Part coverage, duplicate filters and the fixed-point floor (docs/method.md, "Measuring parts").

Location instability alone is met by many filters that all fire on one central part, and on
object-centred crops even by a "filter" that never moves. These measures tell those apart:

- hit(f, k): over filter f's top images by peak value (among those with landmark k annotated),
  the fraction whose projected peak lies within `radius` pixels of k.
- fixed(f, k): the same hit rate for the best single input pixel (one pixel for every image) on
  the same images. f detects k when hit >= 0.5 and hit >= fixed + 0.2; f's part is the landmark
  with the highest such hit. Coverage is the fraction of landmarks with at least one detector.
- Twins: two filters of one category whose peak values over that category's images correlate
  >= 0.9 (Pearson). Dead: peak 0 on >= 90% of the category's images. Duplicates is the fraction
  of filters that have a twin or are dead.
- offset(f, k): the mean (dx, dy) from landmark k to f's peak over the same top images, so a
  reader can see where a filter fires relative to each part, not only how much that varies.
- The fixed-point floor: the location instability of the best single pixel.

Plain numpy, like metrics/instability.py, whose conventions (pixels (x, y), 0-based, landmarks
NaN when absent) apply here.
"""

import dataclasses

import numpy as np
from scipy import signal

from tf_explainer.metrics.instability import top_images

DETECT_HIT = 0.5
DETECT_MARGIN = 0.2
TWIN_CORRELATION = 0.9
DEAD_FRACTION = 0.9
RADIUS_FRACTION = 0.1  # of the input diagonal


@dataclasses.dataclass
class PartResult:
    """Per-filter parts and the summary numbers of one layer.

    part: [F] landmark index each filter detects, -1 for none. hit, fixed: [F, K] (NaN where f
    has no image with k). twins: [F] list of each filter's twins. dead: [F] bool. offset:
    [F, K, 2] mean (dx, dy) pixels from landmark k to f's peak (NaN where f has no image with k).
    """
    coverage: float
    duplicates: float
    part: np.ndarray
    hit: np.ndarray
    fixed: np.ndarray
    twins: list
    dead: np.ndarray
    offset: np.ndarray

    def filters_per_part(self, landmark_names):
        """{landmark name (or "none"): number of filters whose part it is}."""
        names = list(landmark_names) + ["none"]
        counts = {name: 0 for name in names}
        for k in self.part:
            counts[names[k]] += 1
        return counts


def hit_radius(image_size):
    """r = 0.1 x the input diagonal, in pixels."""
    return RADIUS_FRACTION * float(np.hypot(*image_size))


def _disk(radius):
    extent = int(np.floor(radius))
    offsets = np.arange(-extent, extent + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.float64)


def best_pixel_hits(point_sets, image_size, radius):
    """Largest fraction of each point set within `radius` of one pixel of the input [S].

    point_sets: list of [n_s, 2] (x, y) arrays. Points are rounded to the nearest pixel and
    counted with a disk around every pixel (one FFT convolution per set), so a point within half a
    pixel of the radius may count either way. Points outside the input count for no pixel.
    """
    height, width = image_size
    disk = _disk(radius)
    result = np.full(len(point_sets), np.nan)
    for index, points in enumerate(point_sets):
        if len(points) == 0:
            continue
        x = np.clip(np.rint(points[:, 0]).astype(int), -1, width)
        y = np.clip(np.rint(points[:, 1]).astype(int), -1, height)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        counts = np.zeros((height, width))
        np.add.at(counts, (y[inside], x[inside]), 1.0)
        within = signal.fftconvolve(counts, disk, mode="same")
        result[index] = np.round(within.max()) / len(points)
    return result


def _top_image_offsets(peak_xy, peak_values, landmarks, eligible, k, top_k):
    """Each filter's top images for landmark k: (indices [T, F], counted [T, F] bool, peak minus
    landmark (dx, dy) [T, F, 2])."""
    top, counted = top_images(peak_values, eligible, landmarks[:, k, :], top_k)
    chosen_xy = np.take_along_axis(peak_xy, top[..., None], axis=0)  # [T, F, 2]
    return top, counted, chosen_xy - landmarks[top, k, :]


def hit_rates(peak_xy, peak_values, landmarks, eligible, image_size, top_k=100):
    """(hit [F, K], fixed [F, K]) as defined in the module docstring; NaN without images."""
    peak_xy = np.asarray(peak_xy, np.float64)
    peak_values = np.asarray(peak_values, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    f, k_count = peak_values.shape[1], landmarks.shape[1]
    radius = hit_radius(image_size)
    hit = np.full((f, k_count), np.nan)
    fixed = np.full((f, k_count), np.nan)
    for k in range(k_count):
        top, counted, offsets = _top_image_offsets(peak_xy, peak_values, landmarks, eligible, k,
                                                   top_k)
        distance = np.linalg.norm(offsets, axis=-1)
        count = counted.sum(axis=0)
        has = count > 0
        hit[has, k] = ((distance <= radius) & counted).sum(axis=0)[has] / count[has]
        sets = [landmarks[top[counted[:, j], j], k, :] for j in range(f)]
        fixed[:, k] = best_pixel_hits(sets, image_size, radius)
    return hit, fixed


def mean_offsets(peak_xy, peak_values, landmarks, eligible, top_k=100):
    """[F, K, 2] mean (dx, dy) in pixels from landmark k to filter f's peak over f's top images
    (those hit_rates uses); positive dx: the peak lies right of the landmark, positive dy: below.
    NaN where f has no image with k."""
    peak_xy = np.asarray(peak_xy, np.float64)
    peak_values = np.asarray(peak_values, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    f, k_count = peak_values.shape[1], landmarks.shape[1]
    offset = np.full((f, k_count, 2), np.nan)
    for k in range(k_count):
        _, counted, offsets = _top_image_offsets(peak_xy, peak_values, landmarks, eligible, k,
                                                 top_k)
        count = counted.sum(axis=0)
        has = count > 0
        total = np.where(counted[..., None], offsets, 0.0).sum(axis=0)  # [F, 2]
        offset[has, k] = total[has] / count[has, None]
    return offset


def detected_parts(hit, fixed):
    """[F] index of the landmark each filter detects (highest qualifying hit), -1 for none."""
    qualifies = (hit >= DETECT_HIT) & (hit >= fixed + DETECT_MARGIN)
    score = np.where(qualifies, hit, -np.inf)
    return np.where(qualifies.any(axis=1), score.argmax(axis=1), -1)


def twins_and_dead(peak_values, eligible):
    """([F] lists of twin filter indices, [F] dead flags) among filters of one category.

    eligible: [N, F] the images of each filter's category; two filters can be twins only when
    their eligible images are the same (the same category)."""
    peak_values = np.asarray(peak_values, np.float64)
    f = peak_values.shape[1]
    dead = np.array([np.mean(peak_values[eligible[:, j], j] <= 0) >= DEAD_FRACTION
                     if eligible[:, j].any() else True for j in range(f)])
    twins = [[] for _ in range(f)]
    groups = {}
    for j in range(f):
        groups.setdefault(eligible[:, j].tobytes(), []).append(j)
    for members in groups.values():
        rows = eligible[:, members[0]]
        values = peak_values[rows][:, members]
        if values.shape[0] < 2:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation = np.corrcoef(values, rowvar=False)
        correlation = np.atleast_2d(correlation)
        for a, fa in enumerate(members):
            for b, fb in enumerate(members):
                if a != b and correlation[a, b] >= TWIN_CORRELATION:
                    twins[fa].append(fb)
    return twins, dead


def part_measures(peak_xy, peak_values, landmarks, eligible, image_size, top_k=100):
    """Coverage, duplicates and each filter's part for one layer (see the module docstring).

    eligible: [N, F] bool, the images each filter is measured on (its category's images).
    """
    eligible = np.asarray(eligible, bool)
    hit, fixed = hit_rates(peak_xy, peak_values, landmarks, eligible, image_size, top_k)
    part = detected_parts(hit, fixed)
    twins, dead = twins_and_dead(peak_values, eligible)
    k_count = np.asarray(landmarks).shape[1]
    coverage = len(set(part[part >= 0].tolist())) / k_count if k_count else float("nan")
    duplicate = np.array([bool(t) for t in twins]) | dead
    offset = mean_offsets(peak_xy, peak_values, landmarks, eligible, top_k)
    return PartResult(coverage=float(coverage), duplicates=float(duplicate.mean()), part=part,
                      hit=hit, fixed=fixed, twins=twins, dead=dead, offset=offset)


def fixed_point_instability(landmarks, image_size, step=None):
    """Location instability of the best "filter" that peaks at one input pixel on every image.

    For each candidate pixel: the std (ddof 1) over images of its distance to each landmark,
    averaged over landmarks with >= 2 images, divided by the input diagonal; the minimum over
    pixels. Candidates lie on a grid of `step` pixels (default: 1 up to 128 px, coarser above,
    keeping about 128 x 128 candidates). landmarks: [N, K, 2] of the images measured.
    """
    landmarks = np.asarray(landmarks, np.float64)
    height, width = image_size
    step = step or max(1, int(np.ceil(max(height, width) / 128)))
    ys, xs = np.meshgrid(np.arange(0, height, step), np.arange(0, width, step), indexing="ij")
    candidates = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float64)  # [P, 2]
    spreads = []
    for k in range(landmarks.shape[1]):
        points = landmarks[~np.isnan(landmarks[:, k, :]).any(axis=-1), k, :]
        if len(points) < 2:
            continue
        distance = np.linalg.norm(candidates[:, None, :] - points[None, :, :], axis=-1)
        spreads.append(distance.std(axis=1, ddof=1))
    if not spreads:
        return float("nan")
    return float(np.min(np.mean(spreads, axis=0)) / np.hypot(height, width))
