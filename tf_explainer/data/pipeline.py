"""One interface for every data source, and the tf.data pipeline that batches it.

A DataSource yields unbatched examples {"raw": uint8 [H, W, 3] object crop resized to the input
size, "label": int32 index into `class_names`, "landmarks": float32 [K, 2] (x, y) in the crop's
0-based pixel centres, NaN where absent}. `batches` shuffles, flips, batches and preprocesses.

Crop geometry (see manifest.py for the convention): the box [x_min, x_max] (pixel edges) is
stretched onto the W_in output pixels, so output pixel j samples the source at edge coordinate
x_min + (j + 0.5) * (x_max - x_min) / W_in, and a landmark at pixel centre x maps to
x' = (x + 0.5 - x_min) * W_in / (x_max - x_min) - 0.5 (same for y). Landmarks that land outside the
crop ([-0.5, W_in - 0.5]) are absent (NaN): the network never sees them. Resampling is bilinear
with antialiasing, so downscaled crops do not alias.
"""

import collections
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tf_explainer.data import manifest as manifest_lib
from tf_explainer.data import synthetic

BACKGROUND = manifest_lib.BACKGROUND


class DataSource:
    """Class and landmark names plus per-split examples; built by manifest_source/synthetic_source."""

    def __init__(self, class_names: Sequence[str], landmark_names: Sequence[str],
                 counts: dict, make: Callable, report: Optional[manifest_lib.ReadReport] = None):
        self.class_names = list(class_names)
        self.landmark_names = list(landmark_names)
        self.report = report
        self._counts = dict(counts)
        self._make = make

    @property
    def splits(self) -> list:
        return sorted(self._counts)

    def num_examples(self, split: str) -> int:
        self._check(split)
        return self._counts[split]

    def examples(self, split: str, input_size: tuple) -> tf.data.Dataset:
        """Unbatched examples of `split` in a fixed order, crops resized to input_size (H, W)."""
        self._check(split)
        return self._make(split, (int(input_size[0]), int(input_size[1])))

    def _check(self, split):
        if split not in self._counts:
            raise ValueError(f"Unknown split {split!r}; this source has {self.splits}")


def map_landmarks(points: np.ndarray, box: Sequence[float], input_size: tuple) -> np.ndarray:
    """Whole-image landmarks [..., 2] (pixel centres) -> crop pixel centres; NaN outside the crop."""
    x0, y0, x1, y1 = box
    h, w = input_size
    points = np.asarray(points, dtype=np.float64)
    out = np.empty_like(points)
    out[..., 0] = (points[..., 0] + 0.5 - x0) * w / (x1 - x0) - 0.5
    out[..., 1] = (points[..., 1] + 0.5 - y0) * h / (y1 - y0) - 0.5
    with np.errstate(invalid="ignore"):
        outside = ((out[..., 0] < -0.5) | (out[..., 0] > w - 0.5)
                   | (out[..., 1] < -0.5) | (out[..., 1] > h - 0.5))
    out[outside] = np.nan
    return out.astype(np.float32)


def crop_resize(image: tf.Tensor, box: tf.Tensor, input_size: tuple) -> tf.Tensor:
    """uint8 [H, W, 3] image, box [x_min, y_min, x_max, y_max] (pixel edges) -> uint8 crop."""
    h, w = input_size
    box = tf.cast(box, tf.float32)
    sy = h / (box[3] - box[1])
    sx = w / (box[2] - box[0])
    # ScaleAndTranslate maps input edge coordinate u to u * scale + translation, sampling at
    # output pixel centres, with a kernel widened when shrinking (antialias).
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.constant([h, w], tf.int32), scale=tf.stack([sy, sx]),
        translation=tf.stack([-box[1] * sy, -box[0] * sx]), kernel_type="triangle",
        antialias=True)[0]
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _decode(path: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _overlaps(box, others) -> bool:
    return any(min(box[2], o[2]) > max(box[0], o[0]) and min(box[3], o[3]) > max(box[1], o[1])
               for o in others)


def sample_negative_boxes(image_size: tuple, object_boxes: Sequence, rng: np.random.Generator,
                          count: int = 1, attempts: int = 30) -> list:
    """Up to `count` square boxes inside an image (W, H) that overlap no object box at all.

    The side starts at the longest side of the largest object (so negatives look like object crops
    in scale) and shrinks to 3/4 and 1/2 when nothing fits; boxes are integers in pixel edges.
    """
    width, height = image_size
    longest = max(max(b[2] - b[0], b[3] - b[1]) for b in object_boxes)
    found = []
    for factor in (1.0, 0.75, 0.5):
        side = int(min(longest * factor, width, height))
        if side < 1:
            break
        for _ in range(attempts):
            if len(found) == count:
                return found
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            box = (float(x), float(y), float(x + side), float(y + side))
            if not _overlaps(box, list(object_boxes) + found):
                found.append(box)
    return found


def manifest_source(folder: str, category: Optional[str] = None, negatives: str = "manifest",
                    seed: int = 0, min_box_size: float = 4.0, test_fraction: float = 0.2,
                    negatives_per_image: int = 1) -> DataSource:
    """A DataSource over a landmark manifest folder.

    category=None: multi-category, classes = sorted labels (+ "background" first when negatives are
    used). category="person": target vs rest, classes ["background", "person"]; other categories are
    skipped (and counted). negatives: "manifest" uses the manifest's background records; "sample"
    uses them when the manifest has any, otherwise samples `negatives_per_image` square crops per
    image that overlap none of its object boxes (seeded); "none" uses no negatives.
    """
    if negatives not in ("manifest", "sample", "none"):
        raise ValueError(f"negatives must be 'manifest', 'sample' or 'none', got {negatives!r}")
    all_records, report = manifest_lib.parse_manifest(folder, test_fraction)
    records = manifest_lib.filter_records(
        all_records, report, None if category is None else [category],
        keep_background=negatives != "none", min_box_size=min_box_size)
    positives = [r for r in records if r.label != BACKGROUND]
    if category is not None and not positives:
        raise ValueError(f"{report.path}: no records of category {category!r}; labels are "
                         f"{sorted({r.label for r in all_records})}")
    items = [(r.path, r.bbox, r.label, r.landmarks, r.split) for r in records]
    if negatives == "sample" and len(positives) == len(records):
        items = _with_sampled_negatives(items, all_records, report, seed, negatives_per_image)
    has_negatives = any(it[2] == BACKGROUND for it in items)
    if category is not None:
        class_names = [BACKGROUND, category]
    else:
        class_names = ([BACKGROUND] if has_negatives else []) + sorted({r.label for r in positives})
    if not has_negatives and negatives != "none":
        logging.warning("%s: no negatives (negatives=%r)", report.path, negatives)
    landmark_names = sorted({name for r in positives for name in r.landmarks})
    index = {name: i for i, name in enumerate(class_names)}
    by_split = collections.defaultdict(list)
    for item in items:
        by_split[item[4]].append(item)

    def make(split, input_size):
        chosen = by_split[split]
        points = np.full((len(chosen), len(landmark_names), 2), np.nan, np.float32)
        for i, (_, box, _, landmarks, _) in enumerate(chosen):
            for k, name in enumerate(landmark_names):
                if name in landmarks:
                    points[i, k] = map_landmarks(landmarks[name], box, input_size)
        data = (tf.constant([c[0] for c in chosen]),
                tf.constant(np.array([c[1] for c in chosen], np.float32).reshape(-1, 4)),
                tf.constant([index[c[2]] for c in chosen], tf.int32),
                tf.constant(points))

        def load(path, box, label, landmarks):
            raw = crop_resize(_decode(path), box, input_size)
            return {"raw": raw, "label": label, "landmarks": landmarks}

        return tf.data.Dataset.from_tensor_slices(data).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    logging.info("Manifest source %s: classes %s, landmarks %s, %s", folder, class_names,
                 landmark_names, report.summary())
    return DataSource(class_names, landmark_names,
                      {s: len(v) for s, v in by_split.items()}, make, report)


def _with_sampled_negatives(items, all_records, report, seed, per_image):
    """Insert sampled background crops after each image's last object, in the image's split."""
    boxes = collections.defaultdict(list)
    for r in all_records:
        if r.label != BACKGROUND:
            boxes[r.path].append(r.bbox)
    last = {item[0]: i for i, item in enumerate(items)}
    rng = np.random.default_rng(seed)
    out = []
    for i, item in enumerate(items):
        out.append(item)
        if last[item[0]] != i:
            continue
        with Image.open(item[0]) as im:
            size = im.size
        found = sample_negative_boxes(size, boxes[item[0]], rng, per_image)
        report.sampled_negatives["sampled"] += len(found)
        report.sampled_negatives["images_without_room"] += not found
        out.extend((item[0], box, BACKGROUND, {}, item[4]) for box in found)
    logging.info("Sampled negatives: %s", dict(report.sampled_negatives))
    return out


def synthetic_source(num_train: int, num_test: int, image_size: int = 64,
                     num_categories: int = 4, seed: int = 0,
                     category: Optional[str] = None) -> DataSource:
    """The embedded synthetic parts dataset (see synthetic.py), generated lazily per split.

    category=None: classes ["background", *CATEGORIES[:num_categories]], balanced. category="fox":
    ["background", "fox"], half positives and half background-only negatives (with decoys).
    """
    if not 1 <= num_categories <= len(synthetic.CATEGORIES):
        raise ValueError(f"num_categories must be in 1..{len(synthetic.CATEGORIES)}")
    names = list(synthetic.CATEGORIES[:num_categories])
    if category is None:
        class_names, classes = [BACKGROUND] + names, [None] + list(range(num_categories))
    else:
        if category not in synthetic.CATEGORIES:
            raise ValueError(f"Unknown synthetic category {category!r}; have {synthetic.CATEGORIES}")
        class_names, classes = [BACKGROUND, category], [None, synthetic.CATEGORIES.index(category)]
    sizes = {"train": num_train, "test": num_test}
    cache = {}

    def make(split, input_size):
        if split not in cache:
            cache[split] = synthetic.generate(sizes[split], classes, image_size, seed,
                                              stream=0 if split == "train" else 1)
        images, labels, landmarks = cache[split]
        if tuple(input_size) == (image_size, image_size):
            return tf.data.Dataset.from_tensor_slices(
                {"raw": images, "label": labels, "landmarks": landmarks})
        box = (0.0, 0.0, float(image_size), float(image_size))
        mapped = map_landmarks(landmarks, box, input_size)
        ds = tf.data.Dataset.from_tensor_slices((images, labels, mapped))
        return ds.map(lambda raw, label, points: {"raw": crop_resize(raw, box, input_size),
                                                  "label": label, "landmarks": points},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return DataSource(class_names, synthetic.LANDMARKS, sizes, make)


def flip_permutation(landmark_names: Sequence[str]) -> list:
    """Landmark order after a horizontal flip: "left_x" and "right_x" trade places when both exist."""
    names = list(landmark_names)
    perm = []
    for name in names:
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(a) and b + name[len(a):] in names:
                perm.append(names.index(b + name[len(a):]))
                break
        else:
            perm.append(names.index(name))
    return perm


def flip_example(example: dict, perm: Sequence[int]) -> dict:
    """Mirror one example: pixels left-right, landmarks x -> W - 1 - x, left/right names swapped."""
    raw = tf.reverse(example["raw"], axis=[1])
    width = tf.cast(tf.shape(raw)[1], tf.float32)
    points = tf.gather(example["landmarks"], perm)
    points = tf.stack([width - 1.0 - points[:, 0], points[:, 1]], axis=1)
    return {**example, "raw": raw, "landmarks": points}


def batches(dataset: tf.data.Dataset, preprocess: Callable, batch_size: int, training: bool,
            seed: int = 0, flip: bool = True, shuffle_buffer: int = 2048,
            landmark_names: Optional[Sequence[str]] = None,
            drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches {"image": preprocess(float32 raw), "raw", "label", "landmarks"} from examples.

    training=True: seeded shuffle and, with `flip`, seeded random horizontal flips of pixels and
    landmarks; `landmark_names` (source.landmark_names) is then required so left_/right_ landmarks
    swap. training=False keeps the source's order and pixels.
    """
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if flip:
            if landmark_names is None:
                raise ValueError("batches(training=True, flip=True) needs landmark_names "
                                 "(source.landmark_names) to swap left_/right_ landmarks")
            perm = flip_permutation(landmark_names)

            def maybe_flip(i, example):
                coin = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64), i]))
                return tf.cond(coin < 0.5, lambda: flip_example(example, perm), lambda: example)

            dataset = dataset.enumerate().map(maybe_flip, num_parallel_calls=tf.data.AUTOTUNE,
                                              deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(
        lambda ex: {"image": preprocess(tf.cast(ex["raw"], tf.float32)), "raw": ex["raw"],
                    "label": ex["label"], "landmarks": ex["landmarks"]},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
