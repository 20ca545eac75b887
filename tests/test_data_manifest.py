"""The landmark manifest: validation names file and line, skips are counted, splits are stable."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tf_explainer.data import manifest


def _folder(tmp_path, lines, images=("a.png", "b.png")):
    os.makedirs(tmp_path / "images", exist_ok=True)
    for name in images:
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / name)
    text = "\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n"
    (tmp_path / "manifest.jsonl").write_text(text)
    return str(tmp_path)


GOOD = {"image": "images/a.png", "bbox": [2, 3, 30, 35], "label": "person",
        "landmarks": {"head": [10.5, 5], "neck": [11, 9]}, "split": "train"}


def test_reads_records_with_coordinates(tmp_path):
    bg = {"image": "images/b.png", "bbox": [0, 0, 20, 20], "label": "background", "split": "test"}
    records, report = manifest.read_manifest(_folder(tmp_path, [GOOD, "", bg]))
    assert [r.label for r in records] == ["person", "background"]
    r = records[0]
    assert r.bbox == (2.0, 3.0, 30.0, 35.0)
    assert r.landmarks == {"head": (10.5, 5.0), "neck": (11.0, 9.0)}
    assert r.split == "train" and r.line == 1 and records[1].line == 3
    assert os.path.isfile(r.path) and records[1].landmarks == {}
    assert report.lines == 2 and report.kept == 2 and not report.skipped
    assert report.splits == {"train": 1, "test": 1}


@pytest.mark.parametrize("line, message", [
    ('{"image": "images/a.png", "bbox": [1, 2', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "bbox"}, "missing field 'bbox'"),
    ({k: v for k, v in GOOD.items() if k != "landmarks"}, "missing field 'landmarks'"),
    ({**GOOD, "label": 3}, "'label' must be a non-empty string"),
    ({**GOOD, "bbox": [1, 2, 3]}, "'bbox' must be 4 finite numbers"),
    ({**GOOD, "bbox": [1, 2, "3", 4]}, "'bbox' must be 4 finite numbers"),
    ({**GOOD, "bbox": [30, 3, 30, 35]}, "need x_max > x_min"),
    ({**GOOD, "bbox": [2, 40, 30, 35]}, "need x_max > x_min and y_max > y_min"),
    ({**GOOD, "landmarks": {"head": [1, 2, 3]}}, "landmark 'head' must be a pair"),
    ({**GOOD, "landmarks": {"head": [1, True]}}, "landmark 'head' must be a pair"),
    ({**GOOD, "landmarks": [[1, 2]]}, "'landmarks' must be an object"),
    ({**GOOD, "split": 1}, "'split' must be a non-empty string"),
    ({**GOOD, "image": "images/missing.png"}, "image file not found"),
    ({**GOOD, "label": "background"}, "must have no landmarks"),
])
def test_bad_line_names_file_and_line(tmp_path, line, message):
    folder = _folder(tmp_path, [GOOD, GOOD, line, GOOD])
    with pytest.raises(manifest.ManifestError) as err:
        manifest.read_manifest(folder)
    assert str(err.value).startswith(os.path.join(folder, "manifest.jsonl") + ":3: ")
    assert message in str(err.value)


def test_skipped_records_are_counted(tmp_path):
    lines = [GOOD,
             {**GOOD, "label": "dog"},
             {**GOOD, "label": "dog"},
             {**GOOD, "bbox": [0, 0, 3, 30]},
             {"image": "images/b.png", "bbox": [0, 0, 20, 20], "label": "background",
              "landmarks": {}},
             {**GOOD, "landmarks": {"head": [40, 5], "neck": [11, 9]}}]
    records, report = manifest.read_manifest(_folder(tmp_path, lines), categories=["person"],
                                             keep_background=False, min_box_size=4)
    assert len(records) == 2 and report.kept == 2 and report.lines == 6
    assert report.skipped == {"other_category": 2, "box_too_small": 1, "background_not_wanted": 1}
    assert report.landmarks_outside_box == {"head": 1}
    assert "other_category: 2" in report.summary()


def test_missing_split_is_hashed_by_image(tmp_path):
    names = [f"im{i:03d}.png" for i in range(60)]
    lines = [{"image": f"images/{n}", "bbox": [0, 0, 10, 10], "label": "x", "landmarks": {}}
             for n in names for _ in range(2)]
    records, report = manifest.read_manifest(_folder(tmp_path, lines, names))
    assert report.hashed_splits == 120
    by_image = {}
    for r in records:
        by_image.setdefault(r.image, set()).add(r.split)
        assert r.split == manifest.hash_split(r.image)
    assert all(len(s) == 1 for s in by_image.values())  # both records of an image share a split
    tests = sum(manifest.hash_split(f"images/x{i}.jpg") == "test" for i in range(2000))
    assert 330 < tests < 470  # about 20 %
    assert manifest.hash_split("images/x1.jpg", 0.0) == "train"
    assert manifest.hash_split("images/x1.jpg", 1.0) == "test"


def test_write_then_read_round_trip(tmp_path):
    folder = _folder(tmp_path, [GOOD])
    recs = [{"image": "images/b.png", "bbox": [1.23456, 2, 9, 9.5], "label": "cow",
             "landmarks": {"head": [3.0001, 4]}},
            {"image": "images/a.png", "bbox": [0, 0, 5, 5], "label": "background",
             "landmarks": {}, "split": "test"}]
    manifest.write_manifest(folder, recs)
    records, _ = manifest.read_manifest(folder, min_box_size=0)
    assert [r.image for r in records] == ["images/b.png", "images/a.png"]
    assert records[0].bbox == (1.235, 2.0, 9.0, 9.5)
    assert records[0].landmarks == {"head": (3.0, 4.0)}
    assert records[0].split == manifest.hash_split("images/b.png")
    assert records[1].split == "test"
    with pytest.raises(manifest.ManifestError, match=r"record 1: image file not found"):
        manifest.write_manifest(folder, [recs[0], {**recs[0], "image": "images/nope.png"}])
    # A failed write leaves the previous manifest intact.
    assert len(manifest.read_manifest(folder, min_box_size=0)[0]) == 2
