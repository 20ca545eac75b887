"""The DataSource interface and tf.data pipeline: crop geometry, flips, batches, negatives."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_explainer.data import pipeline

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _dot_image(path, size, centre, radius=1):
    """A dark image with a white (2*radius+1)^2 square centred on pixel `centre`."""
    w, h = size
    a = np.full((h, w, 3), 20, np.uint8)
    x, y = centre
    a[y - radius:y + radius + 1, x - radius:x + radius + 1] = 255
    Image.fromarray(a).save(path)


def _write(folder, lines):
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        f.writelines(json.dumps(l) + "\n" for l in lines)
    return str(folder)


def _centre_of_mass(raw):
    v = raw[..., 0].astype(np.float64) - 20.0
    v[v < 0] = 0
    ys, xs = np.mgrid[: raw.shape[0], : raw.shape[1]]
    return np.array([(v * xs).sum() / v.sum(), (v * ys).sum() / v.sum()])


@pytest.mark.parametrize("box, size", [
    ([20.0, 10.0, 60.0, 50.0], (80, 80)),       # 2x enlargement
    ([0.0, 0.0, 100.0, 80.0], (20, 25)),        # 4x reduction, antialiased
    ([13.3, 7.1, 71.9, 64.2], (37, 53)),        # fractional box, different x and y scales
])
def test_crop_resize_puts_the_landmark_on_the_dot(tmp_path, box, size):
    os.makedirs(tmp_path / "images")
    _dot_image(tmp_path / "images" / "a.png", (100, 80), (37, 21))
    folder = _write(tmp_path, [{"image": "images/a.png", "bbox": box, "label": "thing",
                                "landmarks": {"dot": [37, 21]}, "split": "train"}])
    source = pipeline.manifest_source(folder, negatives="none")
    (example,) = list(source.examples("train", size).as_numpy_iterator())
    assert example["raw"].shape == size + (3,) and example["raw"].dtype == np.uint8
    x0, y0, x1, y1 = box
    expected = [(37.5 - x0) * size[1] / (x1 - x0) - 0.5, (21.5 - y0) * size[0] / (y1 - y0) - 0.5]
    np.testing.assert_allclose(example["landmarks"][0], expected, atol=1e-4)
    np.testing.assert_allclose(_centre_of_mass(example["raw"]), expected, atol=0.05)


def test_landmarks_outside_the_crop_are_absent(tmp_path):
    os.makedirs(tmp_path / "images")
    _dot_image(tmp_path / "images" / "a.png", (100, 80), (37, 21))
    folder = _write(tmp_path, [{"image": "images/a.png", "bbox": [30, 15, 50, 40], "label": "thing",
                                "landmarks": {"in": [37, 21], "out": [70, 21]}}])
    source = pipeline.manifest_source(folder, negatives="none", test_fraction=0.0)
    assert source.landmark_names == ["in", "out"]
    assert source.report.landmarks_outside_box == {"out": 1}
    (example,) = list(source.examples("train", (10, 10)).as_numpy_iterator())
    assert np.isfinite(example["landmarks"][0]).all() and np.isnan(example["landmarks"][1]).all()


def _examples(n=6, size=(8, 10), seed=0):
    """Examples whose label is their index, with random pixels and three landmarks."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n,) + size + (3,), dtype=np.uint8)
    points = rng.uniform(0, 7, (n, 3, 2)).astype(np.float32)
    points[0, 2] = np.nan
    data = {"raw": raw, "label": np.arange(n, dtype=np.int32), "landmarks": points}
    return data, tf.data.Dataset.from_tensor_slices(data)


def test_batches_dtypes_shapes_and_order():
    data, ds = _examples()
    out = list(pipeline.batches(ds, lambda x: x / 127.5 - 1.0, 4, training=False).as_numpy_iterator())
    assert [b["label"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5]]
    b = out[0]
    assert set(b) == {"image", "raw", "label", "landmarks"}
    assert b["image"].dtype == np.float32 and b["image"].shape == (4, 8, 10, 3)
    assert b["raw"].dtype == np.uint8 and b["label"].dtype == np.int32
    assert b["landmarks"].dtype == np.float32 and b["landmarks"].shape == (4, 3, 2)
    np.testing.assert_allclose(b["image"], data["raw"][:4] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(b["landmarks"], data["landmarks"][:4])


def test_training_flips_pixels_and_landmarks_and_swaps_sides():
    data, ds = _examples(n=40)
    names = ["left_eye", "nose", "right_eye"]
    first = pipeline.batches(ds, tf.identity, 40, training=True, seed=3, landmark_names=names)
    (batch,) = list(first.as_numpy_iterator())
    (again,) = list(pipeline.batches(ds, tf.identity, 40, training=True, seed=3,
                                     landmark_names=names).as_numpy_iterator())
    np.testing.assert_array_equal(batch["label"], again["label"])  # seeded: same order and flips
    np.testing.assert_array_equal(batch["raw"], again["raw"])
    assert sorted(batch["label"]) == list(range(40)) and list(batch["label"]) != list(range(40))
    flipped = 0
    for raw, label, points in zip(batch["raw"], batch["label"], batch["landmarks"]):
        src_raw, src_pts = data["raw"][label], data["landmarks"][label]
        if np.array_equal(raw, src_raw):
            np.testing.assert_array_equal(points, src_pts)
            continue
        flipped += 1
        np.testing.assert_array_equal(raw, src_raw[:, ::-1])
        expected = src_pts[[2, 1, 0]].copy()  # left_eye <-> right_eye
        expected[:, 0] = 10 - 1 - expected[:, 0]
        np.testing.assert_allclose(points, expected, rtol=1e-6)
    assert 8 < flipped < 32
    with pytest.raises(ValueError, match="landmark_names"):
        pipeline.batches(ds, tf.identity, 4, training=True)
    (plain,) = list(pipeline.batches(ds, tf.identity, 40, training=True, flip=False)
                    .as_numpy_iterator())
    np.testing.assert_array_equal(plain["raw"], data["raw"][plain["label"]])


def test_flip_keeps_the_dot_on_its_landmark(tmp_path):
    os.makedirs(tmp_path / "images")
    _dot_image(tmp_path / "images" / "a.png", (60, 40), (12, 25))
    folder = _write(tmp_path, [{"image": "images/a.png", "bbox": [0, 0, 60, 40], "label": "thing",
                                "landmarks": {"dot": [12, 25]}, "split": "train"}] * 16)
    source = pipeline.manifest_source(folder, negatives="none")
    batch = next(iter(pipeline.batches(source.examples("train", (40, 60)), tf.identity, 16,
                                       training=True, landmark_names=source.landmark_names)))
    xs = batch["landmarks"].numpy()[:, 0, 0]
    assert set(np.round(xs, 3)) == {12.0, 47.0}  # 60 - 1 - 12
    for raw, points in zip(batch["raw"].numpy(), batch["landmarks"].numpy()):
        np.testing.assert_allclose(_centre_of_mass(raw), points[0], atol=0.05)


def _scene(tmp_path, with_negatives):
    """Two images, each with red objects on blue; one "dog" among "cat"s; maybe negatives."""
    os.makedirs(tmp_path / "images", exist_ok=True)
    lines = []
    for i, boxes in enumerate([[(10, 10, 30, 34)], [(5, 40, 25, 60), (60, 5, 80, 25)]]):
        a = np.zeros((70, 90, 3), np.uint8)
        a[...] = BLUE
        for x0, y0, x1, y1 in boxes:
            a[y0:y1, x0:x1] = RED
        Image.fromarray(a).save(tmp_path / "images" / f"{i}.png")
        for j, box in enumerate(boxes):
            lines.append({"image": f"images/{i}.png", "bbox": list(box),
                          "label": "dog" if (i, j) == (1, 1) else "cat",
                          "landmarks": {"head": [box[0] + 2, box[1] + 3]}, "split": "train"})
        if with_negatives:
            lines.append({"image": f"images/{i}.png", "bbox": [40, 40, 60, 60],
                          "label": "background", "split": "train"})
    return _write(tmp_path, lines)


def test_sampled_negatives_stay_off_every_object(tmp_path):
    source = pipeline.manifest_source(_scene(tmp_path, False), category="cat", negatives="sample",
                                      negatives_per_image=2, seed=1)
    assert source.class_names == ["background", "cat"]
    assert source.report.skipped == {"other_category": 1}
    assert source.report.sampled_negatives["sampled"] == 4
    examples = list(source.examples("train", (16, 16)).as_numpy_iterator())
    negatives = [e for e in examples if e["label"] == 0]
    assert len(negatives) == 4 and sum(e["label"] == 1 for e in examples) == 2
    for e in negatives:
        assert np.isnan(e["landmarks"]).all()
        assert (e["raw"][..., 0] < 10).all()  # no red: the crop touches no object, the dog included
    rng = np.random.default_rng(0)
    objects = [(10, 10, 30, 34), (40, 20, 70, 50)]
    for _ in range(20):
        for b in pipeline.sample_negative_boxes((100, 80), objects, rng, count=3):
            assert 0 <= b[0] < b[2] <= 100 and 0 <= b[1] < b[3] <= 80
            assert not pipeline._overlaps(b, objects)


def test_class_names_per_mode(tmp_path):
    folder = _scene(tmp_path, True)
    multi = pipeline.manifest_source(folder)
    assert multi.class_names == ["background", "cat", "dog"] and multi.landmark_names == ["head"]
    labels = [int(e["label"]) for e in multi.examples("train", (8, 8)).as_numpy_iterator()]
    assert labels == [1, 0, 1, 2, 0]  # manifest order
    none = pipeline.manifest_source(folder, negatives="none")
    assert none.class_names == ["cat", "dog"] and none.report.skipped == {"background_not_wanted": 2}
    target = pipeline.manifest_source(folder, category="dog", negatives="sample")
    assert target.num_examples("train") == 3  # the manifest's own negatives are used
    with pytest.raises(ValueError, match="no records of category 'cow'"):
        pipeline.manifest_source(folder, category="cow")
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        multi.examples("test", (8, 8))


def test_synthetic_source():
    source = pipeline.synthetic_source(10, 5, image_size=32, seed=2)
    assert source.class_names == ["background", "fox", "bird", "lizard", "dino"]
    assert source.landmark_names == ["head", "neck", "torso", "tail"]
    assert source.num_examples("train") == 10 and source.num_examples("test") == 5
    native = list(source.examples("train", (32, 32)).as_numpy_iterator())
    assert len(native) == 10 and native[0]["raw"].shape == (32, 32, 3)
    big = list(source.examples("train", (48, 48)).as_numpy_iterator())
    for a, b in zip(native, big):
        assert a["label"] == b["label"] and b["raw"].dtype == np.uint8
        np.testing.assert_allclose(b["landmarks"], (a["landmarks"] + 0.5) * 1.5 - 0.5, atol=1e-4)
    target = pipeline.synthetic_source(8, 2, image_size=32, category="bird")
    assert target.class_names == ["background", "bird"]
    labels = [int(e["label"]) for e in target.examples("train", (32, 32)).as_numpy_iterator()]
    assert sorted(labels) == [0] * 4 + [1] * 4


def test_flip_permutation():
    names = ["left_knee", "neck", "right_knee", "left_only", "right_wrist", "left_wrist"]
    assert pipeline.flip_permutation(names) == [2, 1, 0, 3, 5, 4]
