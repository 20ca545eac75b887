"""The HTML report: a page whose every image exists, whose text is escaped, built by the tool too."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.test_tools import TINY, _tool
from tests.tiny import tiny_performer
from tf_explainer import evaluation, report
from tf_explainer.build import build_explainer, initialize_statistics

CLASS_NAMES = ["background", "<b>bird</b>", "cat & dog"]
LANDMARKS = ["head", "tail"]


def _landmark_batches(count=48, batch_size=16, seed=0):
    """{"image", "raw", "label", "landmarks"} batches: a class-coloured blob, its corners landmarks."""
    rng = np.random.default_rng(seed)
    raws = rng.integers(0, 60, (count, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, len(CLASS_NAMES), count).astype(np.int32)
    landmarks = np.full((count, len(LANDMARKS), 2), np.nan, np.float32)
    for i, label in enumerate(labels):
        x, y = rng.integers(2, 22, 2)
        raws[i, y:y + 8, x:x + 8, label] = 230
        landmarks[i, 0] = (x, y)
        if i % 3:  # some images lack the second landmark
            landmarks[i, 1] = (x + 7, y + 7)
    return tf.data.Dataset.from_tensor_slices(
        {"image": raws.astype(np.float32) / 255.0, "raw": raws, "label": labels,
         "landmarks": landmarks}).batch(batch_size)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    performer = tiny_performer(num_classes=3, class_names=CLASS_NAMES)
    explainer = build_explainer(performer)
    data = _landmark_batches()
    initialize_statistics(explainer, data)
    out_dir = str(tmp_path_factory.mktemp("report"))
    path = report.write_report(explainer, performer, data, out_dir, CLASS_NAMES, LANDMARKS,
                               probe_images=3, per_filter=4, max_filters=5)
    return path, open(path, encoding="utf-8").read(), explainer, performer, data


def test_every_image_the_page_links_is_a_png_beside_it(written):
    path, page, *_ = written
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 5 + 3 * 4  # one per filter; image, parts, two Grad-CAMs per probe
    for source in sources:
        assert "/" not in source
        with Image.open(os.path.join(os.path.dirname(path), source)) as image:
            assert image.format == "PNG"
            image.verify()


def test_page_has_summary_and_filter_sections_and_no_scripts(written):
    _, page, *_ = written
    assert "Performer vs explainer" in page
    for row in ("performer target layer", "performer top conv", "explainer conv-interp-2"):
        assert row in page
    assert page.count('<div class="filter">') == 5
    assert page.count('<div class="probe">') == 3
    assert page.count('class="bar pos"') + page.count('class="bar neg"') == 3 * report.TOP_CONTRIBUTORS
    for landmark in LANDMARKS:
        assert f"<td>{landmark}</td>" in page
    assert "<script" not in page and "http" not in page


def test_text_is_escaped(written):
    _, page, *_ = written
    assert "&lt;b&gt;bird&lt;/b&gt;" in page and "cat &amp; dog" in page
    assert "<b>bird</b>" not in page


def test_page_shows_the_measured_explainer_instability(written):
    _, page, explainer, performer, data = written
    collected = evaluation.collect(explainer, data)
    geometry = evaluation.performer_geometries(performer)["part_maps"]
    stability = evaluation.instability(collected, "part_maps", geometry, explainer.negative_class)
    assert stability.num_filters > 0
    assert f"{stability.mean:.4f}" in page


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    performer_dir, explainer_dir = str(root / "performer"), str(root / "explainer")
    _tool("train_performer", *TINY, f"--model_dir={performer_dir}")
    _tool("train_explainer", *TINY, f"--performer_dir={performer_dir}", f"--model_dir={explainer_dir}")
    return performer_dir, explainer_dir


def test_report_tool_writes_the_report_of_a_trained_explainer(trained):
    performer_dir, explainer_dir = trained
    output = _tool("report", *TINY, f"--performer_dir={performer_dir}",
                   f"--model_dir={explainer_dir}", "--max_filters=3")
    path = os.path.join(explainer_dir, "report", "index.html")
    assert path in output and os.path.exists(path)
    page = open(path, encoding="utf-8").read()
    assert page.count('<div class="filter">') == 3 and "explainer conv-interp-2" in page
    for source in re.findall(r'<img src="([^"]+)"', page):
        assert os.path.exists(os.path.join(explainer_dir, "report", source)), source
