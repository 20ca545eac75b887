"""CUB and Pascal-Part converters on tiny files written in the datasets' real formats."""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tf_explainer.data import cub, manifest, pascal_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUB_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
             "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat"]


def _cub(tmp_path):
    """Three CUB images: one-based boxes "x y w h" and part locations "x y visible"."""
    root = tmp_path / "CUB_200_2011"
    names = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg",
             "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg",
             "002.Laysan_Albatross/Laysan_Albatross_0003_3.jpg"]
    for i, name in enumerate(names):
        os.makedirs(root / "images" / os.path.dirname(name), exist_ok=True)
        Image.fromarray(np.full((60 + i, 80, 3), 90, np.uint8)).save(root / "images" / name)
    os.makedirs(root / "parts")
    (root / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (root / "bounding_boxes.txt").write_text(
        "1 11.0 6.0 40.0 30.0\n2 1.0 1.0 80.0 60.0\n3 21.0 16.0 25.5 20.0\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_PARTS)))
    locs = []
    for img in (1, 2, 3):
        for pid in range(1, 16):
            visible = int(not (img == 2 and pid == 14))  # image 2: tail not visible
            x, y = (10.0 * img + pid, 5.0 * img + pid) if visible else (0.0, 0.0)
            locs.append(f"{img} {pid} {x} {y} {visible}\n")
    (root / "parts" / "part_locs.txt").write_text("".join(locs))
    return root


def test_cub_conversion_coordinates(tmp_path):
    out = tmp_path / "out"
    counts = cub.convert_cub(str(_cub(tmp_path)), str(out))
    assert counts["images"] == 3 and counts["invisible_tail"] == 1
    records, report = manifest.read_manifest(str(out), min_box_size=0)
    assert report.kept == 3 and os.path.islink(out / "images")
    first, second, third = records
    assert first.bbox == (10.0, 5.0, 50.0, 35.0)  # 1-based "11 6 40 30" -> 0-based edges
    assert second.bbox == (0.0, 0.0, 80.0, 60.0)  # the whole 80 x 60 image
    # forehead is part 6 -> "head"; back 1; tail 14; all 1-based -> minus 1.
    assert first.landmarks == {"back": (10.0, 5.0), "head": (15.0, 10.0), "tail": (23.0, 18.0)}
    assert second.landmarks == {"back": (20.0, 10.0), "head": (25.0, 15.0)}
    assert [r.split for r in records] == ["train", "test", "train"]
    assert {r.label for r in records} == {"bird"}
    assert Image.open(third.path).size == (80, 62)


def test_cub_species_labels_all_parts_and_copy(tmp_path):
    root = _cub(tmp_path)
    out = tmp_path / "out"
    cub.convert_cub(str(root), str(out), parts=cub.all_parts(str(root)), label=None, images="copy")
    records, _ = manifest.read_manifest(str(out), min_box_size=0)
    assert [r.label for r in records] == ["Black_footed_Albatross"] * 2 + ["Laysan_Albatross"]
    assert not os.path.islink(out / "images") and os.path.isfile(records[2].path)
    assert records[0].landmarks["left_eye"] == (16.0, 11.0)
    assert len(records[0].landmarks) == 15 and len(records[1].landmarks) == 14
    with pytest.raises(ValueError, match="Unknown CUB parts"):
        cub.convert_cub(str(root), str(tmp_path / "bad"), parts={"wing": "wing"})


def test_convert_cub_tool(tmp_path):
    root, out = _cub(tmp_path), tmp_path / "tool_out"
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "tools.convert_cub", f"--cub_dir={root}",
                    f"--out_dir={out}", "--parts=forehead:head,beak"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    records, _ = manifest.read_manifest(str(out), min_box_size=0)
    assert records[0].landmarks == {"head": (15.0, 10.0), "beak": (11.0, 6.0)}


def _struct_array(rows, fields):
    """A 1 x N MATLAB struct array, as savemat writes it from a numpy record array."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[0, i][f] = row[f]
    return arr


def _rect(shape, x0, y0, x1, y1):
    """uint8 mask with pixels x0..x1-1, y0..y1-1 set."""
    m = np.zeros(shape, np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _pascal(tmp_path):
    ann, img = tmp_path / "Annotations_Part", tmp_path / "JPEGImages"
    os.makedirs(ann)
    os.makedirs(img)
    shape = (50, 70)
    cow_parts = [{"part_name": "head", "mask": _rect(shape, 40, 10, 50, 20)},
                 {"part_name": "leye", "mask": _rect(shape, 50, 10, 52, 20)},
                 {"part_name": "neck", "mask": _rect(shape, 35, 20, 40, 24)},
                 {"part_name": "torso", "mask": _rect(shape, 10, 20, 36, 40)},
                 {"part_name": "lfleg", "mask": _rect(shape, 12, 40, 14, 48)}]
    objects = [
        {"class": "cow", "class_ind": 10, "mask": _rect(shape, 10, 10, 52, 48),
         "parts": _struct_array(cow_parts, ["part_name", "mask"])},
        {"class": "car", "class_ind": 7, "mask": _rect(shape, 0, 0, 5, 5), "parts": np.zeros((0, 0))},
        {"class": "dog", "class_ind": 12, "mask": _rect(shape, 60, 30, 70, 50), "parts": np.zeros((0, 0))},
    ]
    scipy.io.savemat(ann / "2008_000001.mat", {"anno": {
        "imname": "2008_000001", "objects": _struct_array(objects, ["class", "class_ind", "mask", "parts"])}})
    # A file with a single object and a single part: loadmat's squeezing turns both into scalars.
    single = [{"class": "bird", "class_ind": 3, "mask": _rect(shape, 5, 5, 15, 25),
               "parts": _struct_array([{"part_name": "torso", "mask": _rect(shape, 5, 10, 15, 25)}],
                                      ["part_name", "mask"])}]
    scipy.io.savemat(ann / "2008_000002.mat", {"anno": {
        "imname": "2008_000002", "objects": _struct_array(single, ["class", "class_ind", "mask", "parts"])}})
    for name in ("2008_000001", "2008_000002"):
        Image.fromarray(np.zeros(shape + (3,), np.uint8)).save(img / f"{name}.jpg")
    return ann, img


def test_pascal_part_conversion(tmp_path):
    ann, img = _pascal(tmp_path)
    out = tmp_path / "out"
    counts = pascal_part.convert_pascal_part(str(ann), str(img), str(out))
    assert counts["skipped_other_class"] == 1  # the car
    assert counts["objects_cow"] == 1 and counts["objects_dog"] == 1 and counts["objects_bird"] == 1
    records, report = manifest.read_manifest(str(out), min_box_size=0)
    assert report.hashed_splits == 3  # Pascal-Part has no split: the reader hashes by image
    cow, dog, bird = records
    assert (cow.label, dog.label, bird.label) == ("cow", "dog", "bird")
    assert cow.bbox == (10.0, 10.0, 52.0, 48.0)  # mask columns 10..51, rows 10..47
    # Head group = head (cols 40..49) + leye (cols 50..51): mean column (44.5*100 + 50.5*20) / 120.
    assert cow.landmarks["head"] == pytest.approx(((44.5 * 100 + 50.5 * 20) / 120, 14.5), abs=1e-3)
    assert cow.landmarks["neck"] == (37.0, 21.5)
    assert cow.landmarks["torso"] == (22.5, 29.5)
    assert dog.bbox == (60.0, 30.0, 70.0, 50.0) and dog.landmarks == {}
    assert bird.landmarks == {"torso": (9.5, 17.0)}
    assert records[0].path == records[1].path


def test_pascal_part_reads_real_layout_and_reports_missing_images(tmp_path):
    ann, img = _pascal(tmp_path)
    imname, objects = pascal_part.read_annotation(str(ann / "2008_000001.mat"))
    assert imname == "2008_000001"
    assert [o[0] for o in objects] == ["cow", "car", "dog"]
    assert [p[0] for p in objects[0][2]] == ["head", "leye", "neck", "torso", "lfleg"]
    assert objects[1][2] == []
    counts = pascal_part.convert_pascal_part(str(ann), str(img), str(tmp_path / "all"), classes=None)
    assert counts["objects_car"] == 1
    os.remove(img / "2008_000002.jpg")
    with pytest.raises(FileNotFoundError, match="2008_000002.jpg"):
        pascal_part.convert_pascal_part(str(ann), str(img), str(tmp_path / "out2"))
