import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import training
from tf_explainer.build import build_explainer, initialize_statistics

TINY_VGG = {"num_classes": 5, "grid": 4, "channels": 8, "fc_units": 16}
# VGG-16's widths on a 2 x 2 pool4 grid: the built-in VGG-16 at 32 x 32 px matches it, so the
# full-network epochs run too.
SMALL_GRID_VGG = {"num_classes": 5, "grid": 2}


@pytest.fixture(scope="module")
def results():
    return training.benchmark(training.Config(
        images_per_epoch=16, default_batch_size=8, default_step_rounds=3, vgg16_batch_size=4,
        vgg16_step_rounds=3, vgg16_epoch_batches=2, epoch_rounds=1, jpeg_side=32,
        include_full_vgg16=True, vgg16_shape=SMALL_GRID_VGG, matmul_size=256, synthetic_images=8))


def test_training_benchmark_has_the_headline_keys_with_sane_values(results):
    saved = json.loads(json.dumps(results))
    for key in ("cache_speedup", "cache_speedup_vgg16", "flops_ratio_vgg16", "peak_rss_mb",
                "matmul_gflops", "synthetic_images_per_second"):
        assert saved[key] > 0, key
    for key in ("filter_loss_share_approx", "filter_loss_share_exact"):
        assert -1 < saved[key] < 1, key  # a noisy tiny run may time the loss below "none"
    assert saved["machine"]["cpus"] >= 1


@pytest.mark.parametrize("network", ["default", "vgg16"])
def test_each_network_reports_steps_shares_flops_and_throughput(results, network):
    section = results[network]
    for loss in training.FILTER_LOSSES:
        step = section["step_ms"][loss]
        assert 0 < step["range"][0] <= step["iqr"][0] <= step["median"] <= step["iqr"][1] <= step["range"][1]
    for loss in ("approximate", "exact"):
        share = section["filter_loss_share"][loss]
        assert share["range"][0] <= share["median"] <= share["range"][1] < 1
    assert section["flops"]["step_gflop"] > 0 and section["flops"]["ratio"] > 0
    assert section["images_per_second"]["cache"] > 0
    assert all(v > 0 for v in section["images_per_second"].values())


def test_default_epoch_compares_every_image_source_with_the_cache(results):
    epoch = results["default"]["epoch"]
    assert {"cache", "images_synthetic", "images_jpeg"} <= set(epoch)
    assert epoch["speedup_jpeg"]["median"] == pytest.approx(
        epoch["images_jpeg"]["median"] / epoch["cache"]["median"], rel=1e-6)
    profile = epoch["profile"]
    for part in ("cache_read", "explainer_steps", "performer_forward", "pipeline_synthetic",
                 "pipeline_jpeg"):
        assert profile[part] > 0, part
    assert results["cache_speedup"] == epoch["speedup_jpeg"]["median"]


def test_vgg16_epoch_compares_the_full_network_in_step_with_its_feature_cache(results):
    section = results["vgg16"]
    epoch = section["epoch"]
    assert epoch["image_side"] == 32 and epoch["images_per_epoch"] == 8  # 16 x grid px; 2 x 4
    for name in ("cache_vgg16", "images_vgg16"):
        assert 0 < epoch[name]["median"], name
        assert section["images_per_second"][name] == pytest.approx(8 / epoch[name]["median"])
    assert set(section["images_per_second"]) == {"cache", "images_top", "cache_vgg16",
                                                 "images_vgg16"}
    # One round: the median of per-round ratios is the ratio of the two epochs.
    assert epoch["speedup_vgg16"]["median"] == pytest.approx(
        epoch["images_vgg16"]["median"] / epoch["cache_vgg16"]["median"], rel=1e-6)
    assert results["cache_speedup_vgg16"] == epoch["speedup_vgg16"]["median"]
    assert all(epoch["profile"][part] > 0
               for part in ("cache_read", "performer_forward", "explainer_steps"))


def test_full_vgg16_epochs_need_the_vgg16_widths(tmp_path):
    config = training.Config(vgg16_shape=TINY_VGG, include_full_vgg16=True)
    with pytest.raises(ValueError, match="channels 512, fc_units 4096.*'target': \\(4, 4, 512\\)"):
        training.vgg16_shaped(config, str(tmp_path))


def test_step_flops_count_forward_and_backward_of_each_layer():
    performer = training.vgg16_top_performer(**TINY_VGG)
    explainer = build_explainer(performer)
    conv = 2 * 9 * 8 * 8 * 4 * 4  # 3x3, 8 -> 8 channels, on the 4 x 4 grid
    fc_dec_1, fc_dec_2, head = 2 * (2 * 2 * 8) * 16, 2 * 16 * 16, 2 * 16 * 5
    # conv-interp-1 and conv-ordin: forward + kernel gradient; conv-interp-2 and the decoder:
    # forward + kernel gradient + input gradient; the frozen head: forward only.
    expected = 2 * (2 * conv) + 3 * (conv + fc_dec_1 + fc_dec_2) + head
    assert training.training_step_flops(explainer, batch_size=3) == 3 * expected


def test_switchable_filter_loss_traces_the_chosen_loss():
    keras.utils.set_random_seed(0)
    performer = training.vgg16_top_performer(**TINY_VGG)
    switch = training.SwitchableFilterLoss("none")
    explainer = build_explainer(performer, filter_loss=switch)
    rng = np.random.default_rng(0)
    batch = {"image": tf.constant(rng.uniform(0, 1, (4, 4, 4, 8)).astype(np.float32)),
             "label": tf.constant([0, 1, 2, 3], tf.int32)}
    initialize_statistics(explainer, tf.data.Dataset.from_tensors(batch))
    explainer.compile(optimizer="adam")
    features = dict(performer.taps()(batch["image"]), label=batch["label"])
    train_functions = {name: training.use_filter_loss(explainer, switch, name, features)
                       for name in ("exact", "none")}  # the switch now says "none"
    exact_loss = float(train_functions["exact"](iter([features]))["filter_interp_1"])
    explainer.reset_metrics()
    none_loss = float(train_functions["none"](iter([features]))["filter_interp_1"])
    assert exact_loss != 0.0 and none_loss == 0.0
