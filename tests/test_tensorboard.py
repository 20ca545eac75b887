"""Trains a tiny explainer with both callbacks, then reads the logs back from a real TensorBoard."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import numpy as np

from tests.test_visualize import probe_batch
from tests.tiny import image_batches, tiny_performer
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.evaluation import performer_geometries
from tf_explainer.tensorboard import ExplainerTensorBoard

STARTUP_TIMEOUT_S = 60


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


def _get(url, body=None):
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


def _tags(base, plugin):
    """{tag: [runs]} of a plugin's /tags route."""
    tags = {}
    for run, run_tags in _get(f"{base}/data/plugin/{plugin}/tags").items():
        for tag in run_tags:
            tags.setdefault(tag, []).append(run)
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


def test_tensorboard_serves_the_explainer_dashboards(tmp_path):
    performer = tiny_performer()
    explainer = build_explainer(performer, filter_loss_weight=0.5)
    train, test = image_batches(2), image_batches(1, seed=1)
    initialize_statistics(explainer, train)
    explainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    log_dir = tmp_path / "logs"
    probe = _with_landmarks(next(iter(test)))
    callback = ExplainerTensorBoard(log_dir, probe, performer_geometries(performer),
                                    hparams={"run": "tiny"}, max_images=4, max_filters=3)
    explainer.fit(train, validation_data=test, epochs=2, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(log_dir)), callback])

    log_path = tmp_path / "tensorboard.log"
    with _tensorboard(log_dir, log_path) as (server, base):
        _wait_for_scalars(base, server, log_path, {"epoch_loss", "probe/instability_explainer"})
        scalars = _tags(base, "scalars")
        assert set(scalars["epoch_loss"]) == {"train", "validation"}
        for name in ("instability_explainer", "instability_performer_top",
                     "instability_performer_target", "p", "reconstructed_accuracy"):
            assert scalars[f"probe/{name}"] == ["probe"]
        values = _get(f"{base}/data/plugin/scalars/scalars?run=probe&tag=probe/p")
        assert [step for _, step, _ in values] == [0, 1]
        assert 0 < values[-1][2] < 1
        instability = _get(f"{base}/data/plugin/scalars/scalars?run=probe"
                           "&tag=probe/instability_explainer")
        assert np.isfinite(instability[-1][2])

        images = _tags(base, "images")
        for name in ("part_overlay", "top_patches", "grad_cam"):
            assert images[f"images/{name}"] == ["probe"]
        histograms = _tags(base, "histograms")
        assert {"activations/part_maps", "activations/filter_0", "activations/filter_2"} <= set(
            histograms)
        assert "activations/filter_3" not in histograms

        listing = _get(f"{base}/data/plugins_listing")
        assert listing["hparams"]["enabled"] and listing["custom_scalars"]["enabled"]
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        assert {"filter_loss_weight", "eta", "learning_rate", "pool_position", "run"} <= hparams
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert "probe/instability_explainer" in metrics
        groups = _get(f"{base}/data/plugin/hparams/session_groups",
                      {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"],
                       "colParams": [], "startIndex": 0, "sliceSize": 10})
        session_metrics = {m["name"]["tag"]: m["value"]
                           for m in groups["sessionGroups"][0]["metricValues"]}
        assert session_metrics["probe/p"] == values[-1][2]
        layout = _get(f"{base}/data/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == [
            "Losses", "Fusion", "Interpretability", "Balance", "Classification"]
