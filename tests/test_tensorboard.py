"""Trains a tiny performer and two tiny explainers with the TensorBoard callbacks under one root,
as the tools lay them out (<root>/<model dir>/logs), then reads the logs back from a real
TensorBoard server."""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from PIL import Image

from tests.test_visualize import probe_batch
from tests.tiny import image_batches, tiny_performer
from tf_explainer.balance import GradientBalance
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.evaluation import performer_geometries
from tf_explainer.tensorboard import (EXPLAINER, IMAGE_TAGS, PEAKS_TAG, PERFORMER,
                                      ExplainerTensorBoard, ModelTensorBoard, captioned,
                                      hparam_value, row_labelled)
from tf_explainer.visualize import PALETTE

STARTUP_TIMEOUT_S = 60
CLASS_NAMES = ["bird", "cat", "dog"]
LANDMARK_NAMES = ["head", "tail"]
PROBE_FILTERS = 3  # max_filters of the probe callbacks
# The settings the explainer tool passes (its explainer flags), per model directory.
SETTINGS = {
    "explainer": {"fusion_logit_scale": 1.0, "template_form": "paper", "filter_loss": "exact",
                  "epochs": 2, "learning_rate": 1e-3, "optimizer": "adam", "eta": 1.0,
                  "filter_loss_weight": 0.5, "use_masks": True, "objective": "reconstruction"},
    "explainer_cls": {"fusion_logit_scale": 4.0, "template_form": "official",
                      "filter_loss": "approximate", "epochs": 1, "learning_rate": 1e-2,
                      "optimizer": "sgd", "eta": 0.5, "filter_loss_weight": 1.0,
                      "use_masks": False, "objective": "classification"},
}


def _with_landmarks(batch):
    """Two landmarks per image, the second missing on every other image."""
    size = int(batch["label"].shape[0])
    landmarks = np.random.default_rng(0).uniform(0, 31, (size, 2, 2)).astype(np.float32)
    landmarks[::2, 1] = np.nan
    return {**probe_batch(batch), "landmarks": landmarks}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, body=None):
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return r.read()


def _get(url, body=None):
    return json.loads(_request(url, body))


def _tags(base, plugin):
    """{tag: {run: tag info (description, ...)}} of a plugin's /tags route."""
    tags = {}
    for run, run_tags in _get(f"{base}/data/plugin/{plugin}/tags").items():
        for tag, info in run_tags.items():
            tags.setdefault(tag, {})[run] = info
    return tags


@contextlib.contextmanager
def _tensorboard(log_dir, log_path):
    """A TensorBoard server on a free local port, stopped by its PID on exit; yields its URL."""
    port = _free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    with open(log_path, "wb") as log:
        server = subprocess.Popen([binary, "--logdir", str(log_dir), "--port", str(port),
                                   "--host", "127.0.0.1", "--load_fast=false"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            yield server, f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_for_scalars(base, server, log_path, wanted):
    """Polls until TensorBoard has loaded the `wanted` scalar tags (it loads in the background)."""
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        assert server.poll() is None, log_path.read_text(errors="replace")
        try:
            if wanted <= set(_tags(base, "scalars")):
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TensorBoard did not serve {wanted} within {STARTUP_TIMEOUT_S} s")


def _train_performer(model_dir):
    model = tiny_performer(seed=1, class_names=CLASS_NAMES).model
    model.trainable = True  # a Performer freezes its model; training.train_performer thaws it
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pairs = lambda batch: (batch["image"], batch["label"])  # noqa: E731
    model.fit(image_batches(1).map(pairs), validation_data=image_batches(1, seed=1).map(pairs),
              epochs=1, verbose=0,
              callbacks=[ModelTensorBoard(model_dir / "logs", PERFORMER)])


def _train_explainer(model_dir, performer, train, test, settings):
    """Trains an explainer with the callbacks as training.fit and the explainer tool
    build them: ModelTensorBoard last, the probe callback given every setting of the run."""
    options = {k: settings[k] for k in ("fusion_logit_scale", "template_form", "filter_loss",
                                        "eta", "filter_loss_weight", "use_masks", "objective")}
    if options["objective"] == "classification":
        options["category_source"] = "label"
    explainer = build_explainer(performer, **options)
    initialize_statistics(explainer, train)
    explainer.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]))
    log_dir = model_dir / "logs"
    probe = ExplainerTensorBoard(log_dir, _with_landmarks(next(iter(test))),
                                 performer_geometries(performer), hparams=settings,
                                 class_names=CLASS_NAMES, landmark_names=LANDMARK_NAMES,
                                 max_images=4, max_filters=PROBE_FILTERS)
    explainer.fit(train, validation_data=test, epochs=settings["epochs"], verbose=0,
                  callbacks=[GradientBalance(list(test.take(1))), probe,
                             ModelTensorBoard(log_dir, EXPLAINER)])
    return explainer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(TensorBoard URL, the explainer "explainer") over a root with a performer and two
    explainer runs."""
    root = tmp_path_factory.mktemp("runs")
    _train_performer(root / "performer")
    performer = tiny_performer(class_names=CLASS_NAMES)
    train, test = image_batches(2), image_batches(1, seed=1)
    explainer = _train_explainer(root / "explainer", performer, train, test,
                                 SETTINGS["explainer"])
    _train_explainer(root / "explainer_cls", performer, train, test, SETTINGS["explainer_cls"])
    log_path = root.parent / "tensorboard.log"
    with _tensorboard(root, log_path) as (server, base):
        _wait_for_scalars(base, server, log_path,
                          {"performer/epoch_loss", "explainer/epoch_loss",
                           "explainer/epoch_classification", "probe/instability_explainer"})
        yield base, explainer


@pytest.mark.slow
def test_scalar_tags_are_distinct_per_model(served):
    base, _ = served
    scalars = _tags(base, "scalars")
    assert set(scalars["performer/epoch_loss"]) == {"performer/logs/train",
                                                    "performer/logs/validation"}
    assert set(scalars["explainer/epoch_loss"]) == {
        f"{model}/logs/{run}" for model in SETTINGS for run in ("train", "validation")}
    assert set(scalars["performer/epoch_accuracy"]) == {"performer/logs/train",
                                                        "performer/logs/validation"}
    # Every tag is its model's: no bare Keras tag that two models would share.
    assert all(tag.split("/")[0] in {PERFORMER, EXPLAINER, "probe"} for tag in scalars), scalars
    for name in ("instability_explainer", "instability_performer_top",
                 "instability_performer_target", "p", "reconstructed_accuracy"):
        assert set(scalars[f"probe/{name}"]) == {f"{model}/logs/probe" for model in SETTINGS}
    values = _get(f"{base}/data/plugin/scalars/scalars?run=explainer/logs/probe&tag=probe/p")
    assert [step for _, step, _ in values] == [0, 1]
    assert 0 < values[-1][2] < 1


@pytest.mark.slow
def test_custom_scalars_layout_has_a_category_per_model_that_matches_its_tags(served):
    base, _ = served
    layout = _get(f"{base}/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert titles == ["Losses", "Fusion", "Interpretability", "Balance", "Classification",
                      EXPLAINER, PERFORMER]
    charts = {c["title"]: c["chart"] for c in layout["category"]}
    performer_patterns = {p for chart in charts[PERFORMER] for p in chart["multiline"]["tag"]}
    assert {"^performer/epoch_loss$", "^performer/epoch_accuracy$"} <= performer_patterns
    tags = set(_tags(base, "scalars"))
    for category in layout["category"]:
        for chart in category["chart"]:
            for pattern in chart["multiline"]["tag"]:
                assert any(re.search(pattern, tag) for tag in tags), (category["title"], pattern)
                if not pattern.startswith("^probe/"):
                    owner = PERFORMER if category["title"] == PERFORMER else EXPLAINER
                    assert pattern.startswith(f"^{owner}/"), pattern


@pytest.mark.slow
def test_no_per_filter_histograms_one_of_filter_peaks(served):
    base, explainer = served
    histograms = _tags(base, "histograms")
    assert set(histograms) == {PEAKS_TAG}
    assert set(histograms[PEAKS_TAG]) == {f"{model}/logs/probe" for model in SETTINGS}
    points = _get(f"{base}/data/plugin/histograms/histograms?run=explainer/logs/probe"
                  f"&tag={PEAKS_TAG}")
    counts = sum(count for _, _, count in points[-1][2])
    images = 8  # image_batches' batch size
    assert counts == pytest.approx(images * explainer.part_filters)


@pytest.mark.slow
def test_every_tag_has_a_description(served):
    base, _ = served
    for plugin in ("scalars", "images", "histograms"):
        for tag, runs in _tags(base, plugin).items():
            for run, info in runs.items():
                assert info["description"].strip(), (plugin, run, tag)


def _has_colour(pixels, colour, tolerance=24):
    """Whether some pixel of [..., 3] is `colour` (anti-aliased text only nears it)."""
    distance = np.abs(np.asarray(pixels, np.int32) - np.asarray(colour, np.int32)).max(axis=-1)
    return bool((distance <= tolerance).any())


def _image(base, run, tag, sample=0):
    entries = _get(f"{base}/data/plugin/images/images?run={run}&tag={tag}&sample={sample}")
    png = _request(f"{base}/data/plugin/images/individualImage?{entries[-1]['query']}")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.slow
def test_images_are_captioned_and_described(served):
    base, _ = served
    images = _tags(base, "images")
    assert set(images) == set(IMAGE_TAGS.values())
    run = "explainer/logs/probe"
    overlay_info = images[IMAGE_TAGS["part_overlay"]][run]
    labels = image_batches(1, seed=1).take(1).get_single_element()["label"].numpy()
    assert f"probe image 1 ({CLASS_NAMES[labels[1]]})" in overlay_info["description"]
    assert overlay_info["samples"] == 4  # max_images
    overlay = _image(base, run, IMAGE_TAGS["part_overlay"])
    # Enlarged 32 px image, then a caption line of the image and one per shown filter, each
    # filter's line in its overlay colour.
    assert overlay.shape[1] >= 192 and overlay.shape[0] == overlay.shape[1] + 4 * 13
    lines = overlay[overlay.shape[1]:].reshape(4, 13, -1, 3)
    for line, colour in zip(lines, ([255, 255, 255], PALETTE[0], PALETTE[1], PALETTE[2])):
        assert _has_colour(line, colour), colour
    patches = _image(base, run, IMAGE_TAGS["top_patches"])
    assert _has_colour(patches[:, :40], [255, 255, 255])  # the row labels' text
    grad_cam = _image(base, run, IMAGE_TAGS["grad_cam"])
    assert _has_colour(grad_cam[-13:], [255, 255, 255])  # its caption line


@pytest.mark.slow
def test_hparams_trials_are_named_by_run_and_carry_every_setting(served):
    base, _ = served
    listing = _get(f"{base}/data/plugins_listing")
    assert listing["hparams"]["enabled"] and listing["custom_scalars"]["enabled"]
    experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    assert set(SETTINGS["explainer"]) | {"pool_position", "centre", "learn_sigma"} <= set(infos)
    assert infos["use_masks"]["type"] == "DATA_TYPE_BOOL"
    assert sorted(infos["use_masks"]["domainDiscrete"]) == [False, True]
    assert infos["template_form"]["type"] == "DATA_TYPE_STRING"
    assert sorted(infos["template_form"]["domainDiscrete"]) == ["official", "paper"]
    assert infos["fusion_logit_scale"]["type"] == "DATA_TYPE_FLOAT64"
    assert infos["fusion_logit_scale"]["domainInterval"] == {"minValue": 1.0, "maxValue": 4.0}
    assert infos["epochs"]["domainInterval"] == {"minValue": 1.0, "maxValue": 2.0}
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"probe/instability_explainer", "probe/p"} <= metrics

    groups = _get(f"{base}/data/plugin/hparams/session_groups",
                  {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"],
                   "colParams": [], "startIndex": 0, "sliceSize": 10})["sessionGroups"]
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == set(SETTINGS)
    for name, settings in SETTINGS.items():
        assert [s["name"] for s in by_name[name]["sessions"]] == [f"{name}/logs/probe"]
        assert {key: by_name[name]["hparams"][key] for key in settings} == settings
    p = _get(f"{base}/data/plugin/scalars/scalars?run=explainer/logs/probe&tag=probe/p")
    session_metrics = {m["name"]["tag"]: m["value"] for m in by_name["explainer"]["metricValues"]}
    assert session_metrics["probe/p"] == p[-1][2]


def test_trial_name_defaults_to_the_model_directory(tmp_path):
    probe = ExplainerTensorBoard(tmp_path / "explainer_cls" / "logs", {}, {})
    assert probe.run_name == "explainer_cls"
    assert ExplainerTensorBoard(tmp_path / "mine", {}, {}).run_name == "mine"
    assert ExplainerTensorBoard(tmp_path / "logs", {}, {}, run_name="ablation").run_name == (
        "ablation")


def test_hparam_values_are_bools_numbers_or_strings():
    assert hparam_value(np.float32(0.5)) == 0.5 and isinstance(hparam_value(np.int64(3)), int)
    assert hparam_value(True) is True and hparam_value("adam") == "adam"
    assert hparam_value(None) is None
    assert hparam_value(["relu", "relu"]) == "['relu', 'relu']"


def test_captions_keep_the_picture_and_add_text_below():
    picture = np.full((16, 24, 3), 90, np.uint8)
    shown = captioned(picture, [("probe image 0: bird", (255, 255, 255)),
                                ("filter 2: bird, head", (230, 25, 75))])
    assert shown.shape == (16 * 8 + 2 * 13, 24 * 8, 3)  # enlarged x8 to >= 192 px wide
    assert (shown[:128] == 90).all()
    assert _has_colour(shown[128:141], [255, 255, 255]) and not (shown[128:] == 90).any()
    assert _has_colour(shown[141:], [230, 25, 75])
    assert not _has_colour(shown[128:141], [230, 25, 75])
    grid = np.full((2 * 6, 30, 3), 90, np.uint8)
    labelled = row_labelled(grid, 6, ["filter 0: cat", "filter 1: dog, tail"])
    assert labelled.shape[0] == 2 * 6 * 3  # rows enlarged x3 to fit a label line
    assert (labelled[:, -90:] == 90).all()
    assert _has_colour(labelled[:18, :-90], [255, 255, 255])
    assert _has_colour(labelled[18:, :-90], [255, 255, 255])
