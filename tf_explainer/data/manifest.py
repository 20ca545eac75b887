"""The landmark manifest: the interchange format every real dataset is converted into.

A manifest is a folder holding images and `manifest.jsonl`, one JSON object per line:
`{"image", "bbox": [x_min, y_min, x_max, y_max], "label", "landmarks": {name: [x, y]}, "split"}`.

Pixel convention (used by the whole data package):
- Landmarks are 0-based pixel centres: (0, 0) is the centre of the top-left pixel, x right, y down.
- Boxes are pixel edges in the same frame shifted by half a pixel: the whole image spans
  [0, W] x [0, H] and pixel i covers [i, i + 1). A landmark (x, y) therefore sits at
  (x + 0.5, y + 0.5) in box coordinates. This is the convention of CUB and COCO-style boxes, of a box
  fitted to mask pixels c0..c1 ([c0, c1 + 1]) and of LSP's boxes clamped to [0, W].
"""

import collections
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Iterable, Mapping, Optional, Sequence

from absl import logging

MANIFEST_NAME = "manifest.jsonl"
BACKGROUND = "background"


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message starts with `file:line:`."""


@dataclasses.dataclass(frozen=True)
class ManifestRecord:
    """One object (or background) crop: `path` is absolute, `image` as written in the manifest."""

    image: str
    path: str
    bbox: tuple
    label: str
    landmarks: dict
    split: str
    line: int = 0

    def to_json(self) -> dict:
        return {"image": self.image, "bbox": list(self.bbox), "label": self.label,
                "landmarks": {k: list(v) for k, v in self.landmarks.items()}, "split": self.split}


@dataclasses.dataclass
class ReadReport:
    """What `read_manifest` kept and what it skipped, and why (nothing is dropped silently)."""

    path: str
    lines: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    splits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    hashed_splits: int = 0
    landmarks_outside_box: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    sampled_negatives: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.lines} records, kept {self.kept}",
                 "labels " + _fmt(self.labels), "splits " + _fmt(self.splits)]
        if self.hashed_splits:
            parts.append(f"{self.hashed_splits} split by image hash")
        if self.skipped:
            parts.append("skipped " + _fmt(self.skipped))
        if self.landmarks_outside_box:
            parts.append("landmarks outside their box (absent in crops) "
                         + _fmt(self.landmarks_outside_box))
        if self.sampled_negatives:
            parts.append("sampled negatives " + _fmt(self.sampled_negatives))
        return "; ".join(parts)


def _fmt(counter: Mapping) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) + "}"


def hash_split(image: str, test_fraction: float = 0.2) -> str:
    """Deterministic train/test split by image path, so one image always lands in one split."""
    h = int(hashlib.sha1(image.encode("utf-8")).hexdigest()[:8], 16) / 2.0 ** 32
    return "test" if h < test_fraction else "train"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_record(obj, folder: str, where: str, line: int = 0,
                 test_fraction: float = 0.2, check_image: bool = True) -> ManifestRecord:
    """Validate one manifest object; errors are ManifestError prefixed with `where`."""
    def fail(msg):
        raise ManifestError(f"{where}: {msg}")

    if not isinstance(obj, dict):
        fail(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("image", "bbox", "label"):
        if key not in obj:
            fail(f"missing field {key!r}")
    image, bbox, label = obj["image"], obj["bbox"], obj["label"]
    if not isinstance(image, str) or not image:
        fail(f"'image' must be a non-empty string, got {image!r}")
    if not isinstance(label, str) or not label:
        fail(f"'label' must be a non-empty string, got {label!r}")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))):
        fail(f"'bbox' must be 4 finite numbers [x_min, y_min, x_max, y_max], got {bbox!r}")
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if x1 <= x0 or y1 <= y0:
        fail(f"'bbox' {bbox!r} is empty: need x_max > x_min and y_max > y_min")
    if "landmarks" not in obj and label != BACKGROUND:
        fail("missing field 'landmarks' (use {} when none is visible)")
    landmarks = obj.get("landmarks", {})
    if not isinstance(landmarks, dict):
        fail(f"'landmarks' must be an object {{name: [x, y]}}, got {type(landmarks).__name__}")
    if label == BACKGROUND and landmarks:
        fail(f"a {BACKGROUND!r} record must have no landmarks, got {sorted(landmarks)}")
    points = {}
    for name, xy in landmarks.items():
        if not (isinstance(xy, (list, tuple)) and len(xy) == 2 and all(map(_is_number, xy))):
            fail(f"landmark {name!r} must be a pair of finite numbers [x, y], got {xy!r}")
        points[name] = (float(xy[0]), float(xy[1]))
    split = obj.get("split")
    if split is not None and (not isinstance(split, str) or not split):
        fail(f"'split' must be a non-empty string when present, got {split!r}")
    path = os.path.join(folder, image)
    if check_image and not os.path.isfile(path):
        fail(f"image file not found: {path}")
    return ManifestRecord(image=image, path=os.path.abspath(path), bbox=(x0, y0, x1, y1),
                          label=label, landmarks=points,
                          split=split if split is not None else hash_split(image, test_fraction),
                          line=line)


def read_manifest(folder: str, categories: Optional[Iterable[str]] = None,
                  keep_background: bool = True, min_box_size: float = 4.0,
                  test_fraction: float = 0.2):
    """Read and validate `folder/manifest.jsonl`; returns (records, ReadReport).

    Any malformed line raises ManifestError naming the file and 1-based line. Valid records left out
    on purpose (see `filter_records`) are counted per reason in the report and logged.
    """
    records, report = parse_manifest(folder, test_fraction)
    return filter_records(records, report, categories, keep_background, min_box_size), report


def parse_manifest(folder: str, test_fraction: float = 0.2):
    """Every record of `folder/manifest.jsonl`, validated and unfiltered, and a fresh ReadReport."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest file not found")
    report = ReadReport(path=path)
    records = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            records.append(parse_record(obj, folder, where, number, test_fraction))
            report.lines += 1
            report.hashed_splits += "split" not in obj
    return records, report


def filter_records(records: Sequence[ManifestRecord], report: ReadReport,
                   categories: Optional[Iterable[str]] = None, keep_background: bool = True,
                   min_box_size: float = 4.0) -> list:
    """Keep records of `categories` (None: all), background when wanted, and boxes at least
    `min_box_size` pixels on each side; count every record left out, per reason, in `report`."""
    wanted = None if categories is None else set(categories)
    kept = []
    for record in records:
        reason = _skip_reason(record, wanted, keep_background, min_box_size)
        if reason:
            report.skipped[reason] += 1
            continue
        x0, y0, x1, y1 = record.bbox
        for name, (x, y) in record.landmarks.items():
            if not (x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1):
                report.landmarks_outside_box[name] += 1
        kept.append(record)
        report.kept += 1
        report.labels[record.label] += 1
        report.splits[record.split] += 1
    logging.info("Read manifest %s", report.summary())
    if report.skipped:
        logging.warning("Skipped manifest records in %s: %s", report.path, _fmt(report.skipped))
    return kept


def _skip_reason(record, wanted, keep_background, min_box_size) -> Optional[str]:
    if record.label == BACKGROUND:
        if not keep_background:
            return "background_not_wanted"
    elif wanted is not None and record.label not in wanted:
        return "other_category"
    x0, y0, x1, y1 = record.bbox
    if min(x1 - x0, y1 - y0) < min_box_size:
        return "box_too_small"
    return None


def write_manifest(folder: str, records: Sequence) -> str:
    """Validate `records` (dicts in the manifest schema or ManifestRecords) and write them.

    Image paths must be relative to `folder` and exist, so a written manifest always reads back.
    The file is written to a temporary name and renamed, so readers never see half a manifest.
    """
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, rec in enumerate(records):
        obj = rec.to_json() if isinstance(rec, ManifestRecord) else dict(rec)
        parse_record(obj, folder, f"record {i}")
        out = {"image": obj["image"], "bbox": [round(float(v), 3) for v in obj["bbox"]],
               "label": obj["label"],
               "landmarks": {k: [round(float(v[0]), 3), round(float(v[1]), 3)]
                             for k, v in obj.get("landmarks", {}).items()}}
        if obj.get("split") is not None:
            out["split"] = obj["split"]
        lines.append(json.dumps(out) + "\n")
    path = os.path.join(folder, MANIFEST_NAME)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)
    logging.info("Wrote %d records to %s", len(lines), path)
    return path


def attach_images(out_dir: str, image_root: str, relative_paths: Iterable[str],
                  mode: str = "symlink") -> None:
    """Make `out_dir/images/<rel>` resolve to `image_root/<rel>` (symlink the folder, or copy files).

    Converters use this so a manifest folder is self-contained without duplicating large datasets.
    """
    if mode not in ("symlink", "copy"):
        raise ValueError(f"mode must be 'symlink' or 'copy', got {mode!r}")
    image_root = os.path.abspath(image_root)
    target = os.path.join(out_dir, "images")
    os.makedirs(out_dir, exist_ok=True)
    if mode == "symlink":
        if os.path.islink(target) and os.path.realpath(target) == os.path.realpath(image_root):
            return
        if os.path.lexists(target):
            raise FileExistsError(f"{target} exists and is not a link to {image_root}")
        os.symlink(image_root, target, target_is_directory=True)
        return
    for rel in relative_paths:
        dst = os.path.join(target, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(image_root, rel), dst)
