"""CUB-200-2011 -> landmark manifest.

CUB stores 1-based pixel coordinates: part locations are pixel positions (converted to 0-based
pixel centres by subtracting 1) and boxes are `x y width height` with (x, y) the 1-based top-left
pixel (converted to edges [x - 1, y - 1, x - 1 + width, y - 1 + height]).
"""

import collections
import os
from typing import Mapping, Optional

from absl import logging

from tf_explainer.data import manifest

# The landmarks the explainer paper evaluates on CUB; CUB's "forehead" is the paper's head.
PAPER_PARTS = {"back": "back", "forehead": "head", "tail": "tail"}


def _table(path: str, columns: int) -> dict:
    """`id rest...` lines -> {id: [fields]}; the last field keeps embedded spaces."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CUB file not found: {path}")
    rows = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split(None, columns - 1)
            if len(fields) != columns:
                raise ValueError(f"{path}:{number}: expected {columns} fields, got {line!r}")
            rows.setdefault(fields[0], []).append([s.strip() for s in fields[1:]])
    return rows


def all_parts(cub_dir: str) -> dict:
    """Every CUB part under a snake_case name ("left eye" -> "left_eye", so flips swap sides)."""
    names = _table(os.path.join(cub_dir, "parts", "parts.txt"), 2)
    return {v[0][0]: v[0][0].replace(" ", "_") for v in names.values()}


def convert_cub(cub_dir: str, out_dir: str, parts: Optional[Mapping[str, str]] = None,
                label: Optional[str] = "bird", images: str = "symlink") -> collections.Counter:
    """Write `out_dir/manifest.jsonl` (+ `out_dir/images`) for CUB; returns counts of what was done.

    `parts` maps CUB part names to landmark names (default: the paper's back/forehead->head/tail);
    only visible parts are kept. `label=None` labels each image with its species name instead of
    one category. `images` is "symlink" (link CUB's images folder) or "copy".
    """
    parts = dict(PAPER_PARTS if parts is None else parts)

    def read(name, columns):
        return _table(os.path.join(cub_dir, name), columns)

    image_names = read("images.txt", 2)
    boxes = read("bounding_boxes.txt", 5)
    splits = read("train_test_split.txt", 2)
    part_names = {pid: v[0][0] for pid, v in read(os.path.join("parts", "parts.txt"), 2).items()}
    unknown = set(parts) - set(part_names.values())
    if unknown:
        raise ValueError(f"Unknown CUB parts {sorted(unknown)}; CUB has {sorted(part_names.values())}")
    locs = read(os.path.join("parts", "part_locs.txt"), 5)
    if label is None:
        classes = {cid: v[0][0].split(".", 1)[-1] for cid, v in read("classes.txt", 2).items()}
        species = {iid: classes[v[0][0]] for iid, v in read("image_class_labels.txt", 2).items()}

    counts = collections.Counter()
    records = []
    for iid, ((rel,),) in image_names.items():
        x, y, w, h = (float(v) for v in boxes[iid][0])
        landmarks = {}
        for pid, px, py, visible in locs.get(iid, []):
            name = part_names[pid]
            if name not in parts:
                continue
            if visible.strip() != "1":
                counts[f"invisible_{parts[name]}"] += 1
                continue
            landmarks[parts[name]] = [float(px) - 1.0, float(py) - 1.0]
            counts[f"landmark_{parts[name]}"] += 1
        records.append({
            "image": "images/" + rel,
            "bbox": [x - 1.0, y - 1.0, x - 1.0 + w, y - 1.0 + h],
            "label": label if label is not None else species[iid],
            "landmarks": landmarks,
            "split": "train" if splits[iid][0][0] == "1" else "test",
        })
        counts["images"] += 1
    manifest.attach_images(out_dir, os.path.join(cub_dir, "images"),
                           [r["image"][len("images/"):] for r in records], images)
    manifest.write_manifest(out_dir, records)
    logging.info("CUB conversion: %s", dict(sorted(counts.items())))
    return counts
