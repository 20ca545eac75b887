"""Pascal-Part annotation .mat files -> landmark manifest.

Each .mat holds a struct `anno` with `imname` and an `objects` struct array; every object has
`class`, `mask` (H x W) and a `parts` struct array of {`part_name`, `mask`}. Per object of a wanted
class we write its mask's box (pixel edges) and, as in the paper, the centres (mean pixel, 0-based)
of three part groups: head (with its sub-parts), neck and torso.
"""

import collections
import glob
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import scipy.io
from absl import logging

from tf_explainer.data import manifest

# The six animal categories the interpretable-CNN papers use from Pascal-Part.
PAPER_CLASSES = ("bird", "cat", "cow", "dog", "horse", "sheep")
# Pascal-Part splits heads into sub-parts (eyes, ears, beak, ...); the paper's "head" is their union.
PAPER_GROUPS = {
    "head": ("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth",
             "muzzle", "beak", "lhorn", "rhorn"),
    "neck": ("neck",),
    "torso": ("torso",),
}


def _items(value) -> list:
    """A MATLAB struct array loaded with squeeze_me as a list (squeezing turns 1 element into a scalar)."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _text(value) -> str:
    return str(np.asarray(value).ravel()[0]) if np.size(value) else ""


def mask_box(mask: np.ndarray) -> Optional[list]:
    """[x_min, y_min, x_max, y_max] in pixel edges around the mask's pixels; None when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def mask_centre(mask: np.ndarray) -> list:
    """Mean pixel (0-based pixel centres, x then y) of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    return [float(cols.mean()), float(rows.mean())]


def read_annotation(path: str) -> tuple:
    """(imname, [(class, mask, [(part_name, mask), ...]), ...]) from one Pascal-Part .mat file."""
    anno = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["anno"]
    objects = []
    for obj in _items(anno.objects):
        parts = [] if np.size(obj.parts) == 0 else [
            (_text(p.part_name), np.asarray(p.mask)) for p in _items(obj.parts)]
        objects.append((_text(getattr(obj, "class")), np.asarray(obj.mask), parts))
    return _text(anno.imname), objects


def convert_pascal_part(annotation_dir: str, image_dir: str, out_dir: str,
                        classes: Optional[Iterable[str]] = PAPER_CLASSES,
                        groups: Optional[Mapping[str, Sequence[str]]] = None,
                        images: str = "symlink") -> collections.Counter:
    """Write `out_dir/manifest.jsonl` (+ `out_dir/images`) from Pascal-Part; returns counts.

    `image_dir` is VOC's JPEGImages. `classes=None` keeps every class. No split is written, so the
    manifest reader splits by image hash (Pascal-Part has no split of its own).
    """
    wanted = None if classes is None else set(classes)
    groups = dict(PAPER_GROUPS if groups is None else groups)
    files = sorted(glob.glob(os.path.join(annotation_dir, "*.mat")))
    if not files:
        raise FileNotFoundError(f"No Pascal-Part .mat files in {annotation_dir}")
    counts = collections.Counter()
    records = []
    for path in files:
        imname, objects = read_annotation(path)
        rel = imname + ".jpg"
        if not os.path.isfile(os.path.join(image_dir, rel)):
            raise FileNotFoundError(f"{path}: image {rel} not found in {image_dir}")
        for cls, mask, parts in objects:
            if wanted is not None and cls not in wanted:
                counts["skipped_other_class"] += 1
                continue
            box = mask_box(mask)
            if box is None:
                counts["skipped_empty_mask"] += 1
                continue
            landmarks = {}
            for group, names in groups.items():
                masks = [m for name, m in parts if name in names and np.any(m)]
                if masks:
                    landmarks[group] = mask_centre(np.logical_or.reduce(masks))
                    counts[f"landmark_{group}"] += 1
            records.append({"image": "images/" + rel, "bbox": box, "label": cls,
                            "landmarks": landmarks})
            counts[f"objects_{cls}"] += 1
    manifest.attach_images(out_dir, image_dir,
                           sorted({r["image"][len("images/"):] for r in records}), images)
    manifest.write_manifest(out_dir, records)
    logging.info("Pascal-Part conversion of %d files: %s", len(files), dict(sorted(counts.items())))
    return counts
