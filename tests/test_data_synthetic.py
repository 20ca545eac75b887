"""The synthetic parts dataset: seeded, landmarks on the drawn parts, categories differ by shape."""

import numpy as np

from tf_explainer.data import synthetic

ALL = [None, 0, 1, 2, 3]
PART_OF_LANDMARK = [synthetic.PART_IDS[name] for name in synthetic.LANDMARKS]


def _scenes(category, n, seed=0, size=64):
    return [synthetic.make_scene(np.random.default_rng([seed, 9 if category is None else category, i]), category, size)
            for i in range(n)]


def test_same_seed_same_data_other_seed_other_data():
    a = synthetic.generate(30, ALL, seed=7)
    b = synthetic.generate(30, ALL, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = synthetic.generate(30, ALL, seed=8)
    d = synthetic.generate(30, ALL, seed=7, stream=1)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    images, classes, landmarks = a
    assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
    assert landmarks.shape == (30, len(synthetic.LANDMARKS), 2) and landmarks.dtype == np.float32
    assert np.bincount(classes, minlength=5).tolist() == [6] * 5  # balanced over the classes


def test_drawing_processes_give_the_same_images_as_one():
    one = synthetic.generate(31, ALL, seed=3, workers=1)
    three = synthetic.generate(31, ALL, seed=3, workers=3)  # uneven chunks of 10, 10 and 11
    for x, y in zip(one, three):
        np.testing.assert_array_equal(x, y)


def test_landmarks_lie_on_their_drawn_parts():
    hits = total = 0
    for category in range(4):
        for scene in _scenes(category, 25):
            image, parts = synthetic.render(scene)
            bare, bare_parts = synthetic.render(scene, with_creature=False)
            assert not bare_parts.any()
            for k, (x, y) in enumerate(scene.landmarks):
                if np.isnan(x):
                    continue
                col, row = int(round(x)), int(round(y))
                total += 1
                on_part = parts[row, col] == PART_OF_LANDMARK[k]
                changed = np.abs(image[row, col].astype(int) - bare[row, col]).max() > 20
                hits += on_part and changed
    assert total > 350
    assert hits / total > 0.97, (hits, total)


def test_landmarks_in_image_or_nan():
    _, classes, landmarks = synthetic.generate(300, ALL, seed=1)
    finite = landmarks[np.isfinite(landmarks[..., 0])]
    assert finite.min() >= -0.5 and finite.max() <= 63.5
    positives = landmarks[classes != 0]
    assert np.isnan(positives[..., 0]).any()  # some parts leave the image
    assert np.isfinite(positives[:, synthetic.LANDMARKS.index("torso"), 0]).all()  # torso never does
    assert np.isnan(landmarks[classes == 0]).all()  # background images have no landmarks


def test_negatives_have_no_creature_landmarks_but_have_clutter():
    scenes = _scenes(None, 40)
    assert all(s.category == -1 and np.isnan(s.landmarks).all() for s in scenes)
    decoys = sum(bool(s.creature) for s in scenes)
    assert 8 < decoys < 32  # about half carry a scrambled-parts decoy
    assert all(len(s.distractors) >= 4 for s in scenes)


def _elongation(mask):
    """Ratio of the principal axes of a part's pixels (1 = round, large = long and thin)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return 1.0
    eig = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])) + 1e-3)
    return float(np.sqrt(eig[1] / eig[0]))


def _shape_features(scene):
    """Head, tail and leg areas relative to the torso, and head and tail elongation."""
    _, parts = synthetic.render(scene)
    mask = {name: parts == pid for name, pid in synthetic.PART_IDS.items()}
    torso = max(mask["torso"].sum(), 1)
    return np.array([mask["head"].sum() / torso, mask["tail"].sum() / torso,
                     mask["legs"].sum() / torso, _elongation(mask["head"]),
                     _elongation(mask["tail"])])


def test_categories_differ_in_part_shapes():
    """A nearest-centroid classifier on the parts' areas and elongation separates the categories."""
    train = {c: np.array([_shape_features(s) for s in _scenes(c, 30, seed=1)]) for c in range(4)}
    means = {c: f.mean(axis=0) for c, f in train.items()}
    scale = np.concatenate(list(train.values())).std(axis=0)
    correct = total = 0
    for c in range(4):
        for s in _scenes(c, 20, seed=2):
            f = _shape_features(s)
            guess = min(means, key=lambda k: np.linalg.norm((f - means[k]) / scale))
            correct += guess == c
            total += 1
    assert correct / total > 0.8, correct / total


def test_other_sizes():
    """(Generation speed is benchmarks/training.py's synthetic_images_per_second.)"""
    images, _, landmarks = synthetic.generate(10, ALL, size=32, seed=0)
    assert images.shape == (10, 32, 32, 3)
    finite = landmarks[np.isfinite(landmarks)]
    assert finite.min() >= -0.5 and finite.max() <= 31.5
