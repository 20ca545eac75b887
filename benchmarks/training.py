"""Explainer training benchmarks: the body of benchmarks/results/training.json.

Two explainers, random weights (the cost of a step does not depend on what the weights learned):
- "default": build_explainer's defaults over the small_vgg performer (64 x 64 input, relu4
  16 x 16 x 64, pool A, paper templates), batch 64.
- "vgg16": a VGG-16-shaped explainer, batch 8: target 14 x 14 x 512 (relu5_2, the paper's
  VGG-16 target, which build_vgg16 uses too), conv-interp-1 from conv5_3 (512, 3 x 3), pool5
  7 x 7 x 512, fc-dec 25088 -> 4096 -> 4096, head fc8 with 200 classes. Its performer is
  vgg16_top_performer: VGG-16 above pool4 (block5_conv1..3, pool5, fc6, fc7, fc8) reading the
  14 x 14 x 512 pool4 map. What lies below the target does not change the cost of an explainer
  step from cached features, so the layers below pool4 are left out there. Its epochs from
  images also run the built-in full VGG-16 (build_performer("vgg16"), 224 x 224 input) in-step,
  against a feature cache of the same images (include_full_vgg16).

Keys of training.json. Times are seconds unless a key says ms. A timing summary is {"median",
"iqr": [25th, 75th percentile], "range": [min, max]} over rounds; each round times every variant
once, in rotating order, so that load from other jobs on a shared machine hits all variants alike.
- cache_speedup: default network, seconds of one epoch trained from JPEG images (performer
  in-step) / one epoch trained from the feature cache (median of per-round ratios).
- cache_speedup_vgg16: the same ratio on the VGG-16 shape: seconds of one epoch of 224 x 224
  images through the full VGG-16 in-step / one epoch of the same images' features from the
  feature cache (vgg16.epoch.speedup_vgg16 median; None without include_full_vgg16).
- filter_loss_share_approx, filter_loss_share_exact: vgg16 (t_loss - t_none) / t_loss.
- flops_ratio_vgg16: vgg16 achieved FLOP/s of the explainer step / float32 matmul FLOP/s.
- synthetic_images_per_second: images of the demo's synthetic dataset (64 x 64, tf_explainer/data/
  synthetic.py) drawn per second, `synthetic_images` of them, one process.
- peak_rss_mb: peak resident memory of the whole run (getrusage ru_maxrss).
- matmul_gflops: float32 GFLOP/s of a 4096 x 4096 matmul, timed in the vgg16 step rounds.
- machine: cpu count, platform, TensorFlow and Keras versions; config: the Config used.
- default, vgg16, each:
  - batch_size; vgg16 also "performer" (what its performer is, in words).
  - step_ms: {"none", "approximate", "exact"}: one explainer training step (Explainer.train_step
    through Keras' train function, Adam) on an in-memory batch of cached features, with that
    filter loss; one explainer, the same weights for all three.
  - filter_loss_share: {"approximate", "exact"}: (t_loss - t_none) / t_loss, computed per
    round against that round's "none" step.
  - flops: "step_gflop" (analytic count, see training_step_flops), "achieved_gflops"
    (step_gflop / median approximate step time), "matmul_gflops" (4096 x 4096 float32 matmul
    timed in the same rounds), "ratio" (achieved / matmul).
  - images_per_second: explainer training with model.fit from the feature cache ("cache",
    read_feature_cache with batched parsing) and with the performer run in-step ("images_*").
    default: "images_synthetic" (the demo's synthetic source, generated before timing) and
    "images_jpeg" (a manifest folder of jpeg_side x jpeg_side JPEGs, 256 by default, about the
    size of the LSP sample's photos (median 241 x 235), decoded and resized to 64 x 64 by the
    project's manifest pipeline). Both with the pipeline of tools/common.py splits(): shuffle,
    random flips, batch, preprocess. vgg16: "images_top" (vgg16_top_performer in-step, fed
    pool4 maps: a lower bound of what the cache saves), and with include_full_vgg16
    "images_vgg16" (the built-in VGG-16 at 224 x 224 in-step on in-memory images: what a VGG-16
    user pays, less JPEG decoding) and "cache_vgg16" (the feature cache of those images).
- Epochs (default.epoch and images_per_second) run with tf.data autotuning off on every source
  (see without_autotune: TF 2.21's autotuner randomly stalls ~1 s at the start of an epoch).
- default.epoch: seconds of one model.fit epoch of images_per_epoch images from each source
  ("cache", "images_synthetic", "images_jpeg"), "speedup_synthetic" and "speedup_jpeg" (per-round
  ratios images / cache), and "profile": seconds per epoch of each part alone: "cache_read"
  (iterating the cache pipeline), "explainer_steps" (median approximate step x batches),
  "performer_forward" (the performer's taps on in-memory images), "pipeline_synthetic" and
  "pipeline_jpeg" (iterating the image pipelines), and "cache_dtype".
- vgg16.epoch (with include_full_vgg16): seconds of one model.fit epoch of images_per_epoch
  images of side image_side (224) with the full VGG-16 in-step ("images_vgg16") and from a
  feature cache that write_feature_cache wrote from the same VGG-16 and images ("cache_vgg16"),
  interleaved by round; "speedup_vgg16" (per-round ratios images / cache); "profile": seconds
  per epoch of "cache_read" (iterating the cache pipeline), "performer_forward" (the VGG-16's
  taps on the in-memory images) and "explainer_steps" (median approximate step x batches).
"""

import dataclasses
import os
import platform
import resource
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import read_feature_cache, write_feature_cache
from tf_explainer.data import batches, manifest_source, synthetic, synthetic_source, write_manifest
from tf_explainer.filter_loss import get_filter_loss
from tf_explainer.performers import build_performer
from tf_explainer.performers.spec import Performer

FILTER_LOSSES = ("none", "approximate", "exact")


class SwitchableFilterLoss:
    """A filter-loss callable whose choice is read when Keras traces the train step.

    Tracing one train function per choice gives the three variants on the same explainer, weights
    and optimizer, so their step times can be interleaved."""

    def __init__(self, name="approximate"):
        self.name = name

    def __call__(self, maps, positive, mask, centres=None):
        return get_filter_loss(self.name)(maps, positive, mask, centres)


def vgg16_top_performer(num_classes=200, grid=14, channels=512, fc_units=4096, seed=0):
    """VGG-16 above pool4 with random weights, in the keras.applications layer names.

    Input: the pool4 map (grid x grid x channels); target relu5_2 (block5_conv2), top conv
    block5_conv3, pool block5_pool, reconstructed fc1/fc2 (fc6/fc7), head fc8."""
    keras.utils.set_random_seed(seed)
    pool4 = keras.Input((grid, grid, channels), name="pool4")
    x = pool4
    for i in (1, 2, 3):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                name=f"block5_conv{i}")(x)
    x = keras.layers.MaxPooling2D(2, name="block5_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc2")(x)
    scores = keras.layers.Dense(num_classes, name="fc8")(x)
    return Performer(
        model=keras.Model(pool4, scores, name="vgg16_top"), target_layer="block5_conv2",
        reconstruct_layers=["fc1", "fc2"], head_layers=["fc8"],
        class_names=[f"class_{i}" for i in range(num_classes)],
        preprocess=lambda x: tf.cast(x, tf.float32), input_size=(grid, grid),
        top_conv_layer="block5_conv3", pool_layer="block5_pool",
        top_conv_output_layer="block5_conv3")


def training_step_flops(explainer, batch_size):
    """FLOPs (2 x multiply-adds) of the conv and dense layers in one explainer training step.

    Counted analytically from the layer shapes. Forward: 2 k^2 C_in C_out H W per conv (all on
    the target grid: "same" padding, stride 1), 2 n_in n_out per dense layer, the frozen head
    included. Backward: the kernel gradient costs as much as the forward again for every
    trainable layer; the input gradient as much again for every layer whose input depends on
    trainable weights, i.e. all but conv-interp-1 and conv-ordin (they read x0) and the head
    (its scores are only logged under the reconstruction objective). Element-wise work (masks,
    norms, filter loss, optimizer update) is not counted.
    """
    cells = explainer.target_shape[0] * explainer.target_shape[1]

    def conv(layer):
        k1, k2, c_in, c_out = layer.kernel.shape
        return 2 * k1 * k2 * c_in * c_out * cells

    def dense(layer):
        n_in, n_out = layer.kernel.shape
        return 2 * n_in * n_out

    convs_from_x0 = [conv(explainer.conv_interp_1), conv(explainer.conv_ordin)]
    inner = [conv(explainer.conv_interp_2)] + [dense(d) for d in explainer.decoder]
    head = [dense(l) for l in explainer.head.layers if isinstance(l, keras.layers.Dense)]
    per_image = 2 * sum(convs_from_x0) + 3 * sum(inner) + sum(head)
    return per_image * batch_size


def matmul_workload(size):
    """A callable that runs one float32 size x size matmul and waits for its result."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    return lambda: float(matmul())


def interleaved_seconds(workloads, rounds, warmup=1):
    """Seconds of each call of each workload (name -> callable), by round.

    Each round calls every workload once, the order rotating between rounds, so the slow phases
    of a machine shared with other jobs hit all workloads alike. Returns {name: [seconds]}."""
    names = list(workloads)
    for name in names:
        for _ in range(warmup):
            workloads[name]()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            workloads[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def summary(values, scale=1.0):
    """Median, interquartile range and range of `values` times `scale`."""
    values = np.asarray(values, np.float64) * scale
    return {"median": float(np.median(values)),
            "iqr": [float(np.percentile(values, 25)), float(np.percentile(values, 75))],
            "range": [float(values.min()), float(values.max())]}


def use_filter_loss(explainer, switch, name, batch):
    """A new train function of `explainer` with filter loss `name`, traced now by one training
    step on `batch` (tf.function traces on first call, and the switch is read while tracing)."""
    switch.name = name
    explainer.make_train_function(force=True)
    train_function = explainer.train_function
    train_function(iter([batch]))
    return train_function


def step_benchmark(explainer, switch, features, batch_size, rounds, matmul_size):
    """Step times per filter loss on one explainer built with `switch` (a SwitchableFilterLoss),
    one step of each per round, interleaved with a float32 matmul for the FLOP ratio. The share
    of a loss is computed per round against that round's "none" step (adjacent in time), then
    summarised. Returns (results, {name: seconds per step})."""
    workloads = {}
    for name in FILTER_LOSSES:
        train_function = use_filter_loss(explainer, switch, name, features)
        workloads[name] = lambda f=train_function: float(f(iter([features]))["loss"])
    workloads["matmul"] = matmul_workload(matmul_size)
    seconds = interleaved_seconds(workloads, rounds, warmup=2)
    use_filter_loss(explainer, switch, "approximate", features)
    shares = {name: [(t - t_none) / t for t, t_none in zip(seconds[name], seconds["none"])]
              for name in ("approximate", "exact")}
    flops = training_step_flops(explainer, batch_size)
    achieved = flops / np.median(seconds["approximate"])
    matmul = 2 * matmul_size ** 3 / np.median(seconds["matmul"])
    results = {"batch_size": batch_size,
               "step_ms": {name: summary(seconds[name], 1000) for name in FILTER_LOSSES},
               "filter_loss_share": {name: summary(v) for name, v in shares.items()},
               "flops": {"step_gflop": flops / 1e9, "achieved_gflops": achieved / 1e9,
                         "matmul_gflops": matmul / 1e9, "ratio": achieved / matmul}}
    return results, seconds


def _ready_explainer(performer, image_batch):
    """(explainer, switch): a switchable filter loss, statistics initialised, Adam."""
    switch = SwitchableFilterLoss()
    explainer = build_explainer(performer, filter_loss=switch)
    initialize_statistics(explainer, tf.data.Dataset.from_tensors(image_batch))
    explainer.compile(optimizer="adam")
    return explainer, switch


def _features(performer, image_batch):
    features = dict(performer.taps()(image_batch["image"], training=False))
    features["label"] = image_batch["label"]
    return features


def without_autotune(dataset):
    """`dataset` with tf.data autotuning off. In TF 2.21 autotuning stalls the first batch of
    about a third of Keras epochs by ~1 s whatever the pipeline (measured here even for
    from_tensor_slices().batch()), more often with the performer in-step; without it the stall
    is gone and the pipelines here run as fast or faster. Timed epochs use it on every source
    alike, so the stall does not pick the winner."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def epoch_seconds(explainer, datasets, rounds):
    """Seconds of one model.fit epoch over each dataset (name -> dataset, autotuning off),
    interleaved."""
    datasets = {name: without_autotune(data) for name, data in datasets.items()}

    def epoch(data):
        return lambda: explainer.fit(data, epochs=1, verbose=0)
    for data in datasets.values():
        explainer.fit(data.take(2), epochs=1, verbose=0)  # trace this input structure
    return interleaved_seconds({name: epoch(data) for name, data in datasets.items()}, rounds,
                               warmup=0)


def iteration_seconds(dataset, rounds):
    """Median seconds to iterate over a dataset once (the input pipeline alone, autotuning off)."""
    dataset = without_autotune(dataset)

    def drain():
        for _ in dataset:
            pass
    return float(np.median(interleaved_seconds({"data": drain}, rounds)["data"]))


def write_jpeg_manifest(source, input_size, folder, side, quality=90):
    """A manifest folder of `source`'s training crops saved as side x side JPEGs.

    The manifest box is the whole image, so the pipeline decodes and resizes every JPEG to the
    performer's input, as it does for a real dataset converted to the manifest format."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    records = []
    for i, example in enumerate(source.examples("train", input_size).as_numpy_iterator()):
        raw = Image.fromarray(example["raw"])
        scale = side / raw.width
        name = f"images/{i:05d}.jpg"
        raw.resize((side, side), Image.BICUBIC).save(os.path.join(folder, name), quality=quality)
        landmarks = {key: [float((x + 0.5) * scale - 0.5), float((y + 0.5) * scale - 0.5)]
                     for key, (x, y) in zip(source.landmark_names, example["landmarks"])
                     if np.isfinite(x)}
        records.append({"image": name, "bbox": [0, 0, side, side], "landmarks": landmarks,
                        "label": source.class_names[int(example["label"])], "split": "train"})
    write_manifest(folder, records)
    return manifest_source(folder, negatives="manifest")


@dataclasses.dataclass
class Config:
    """Sizes of the training benchmarks (tests shrink them)."""

    images_per_epoch: int = 1024  # default network: images in the timed epoch
    default_batch_size: int = 64
    default_step_rounds: int = 40  # rounds of (one step per filter loss, one matmul)
    vgg16_batch_size: int = 8
    vgg16_step_rounds: int = 40
    vgg16_epoch_batches: int = 4
    epoch_rounds: int = 5  # rounds of (one epoch per data source)
    jpeg_side: int = 256  # side of the JPEGs the default network's uncached epoch decodes
    cache_dtype: str = "float32"
    # Also time the built-in VGG-16 in-step (at 16 x grid px: 224) against its feature cache;
    # needs vgg16_shape's channels and fc_units at VGG-16's 512 and 4096.
    include_full_vgg16: bool = True
    vgg16_shape: dict = dataclasses.field(default_factory=dict)  # vgg16_top_performer kwargs
    matmul_size: int = 4096
    synthetic_images: int = 400


def default_network(config, work_dir):
    """The default explainer: step times, FLOPs, and epochs from images vs from the cache."""
    batch_size = config.default_batch_size
    keras.utils.set_random_seed(0)
    source = synthetic_source(config.images_per_epoch, 0, num_categories=3, seed=0)
    performer = build_performer("small_vgg", None, class_names=source.class_names)

    def training_batches(data_source):
        """As tools/common.py splits() batches the training split: shuffle, flips, preprocess."""
        return batches(data_source.examples("train", performer.input_size), performer.preprocess,
                       batch_size, training=True, seed=0, flip=True,
                       landmark_names=data_source.landmark_names)

    jpeg_source = write_jpeg_manifest(source, performer.input_size,
                                      os.path.join(work_dir, "jpeg_manifest"), config.jpeg_side)
    images = {"synthetic": training_batches(source), "jpeg": training_batches(jpeg_source)}
    first = next(iter(images["synthetic"]))
    image_batch = {"image": first["image"], "label": first["label"]}
    explainer, switch = _ready_explainer(performer, image_batch)
    results, seconds = step_benchmark(explainer, switch, _features(performer, image_batch),
                                      batch_size, config.default_step_rounds, config.matmul_size)

    cache_dir = os.path.join(work_dir, "default_cache")
    in_order = batches(source.examples("train", performer.input_size), performer.preprocess,
                       batch_size, training=False)
    write_feature_cache(performer.taps(), in_order, cache_dir, dtype=config.cache_dtype)
    cached = read_feature_cache(cache_dir, batch_size, shuffle_buffer=4096, seed=0)
    epochs = epoch_seconds(explainer, {"cache": cached, **{f"images_{k}": v for k, v in images.items()}},
                           config.epoch_rounds)
    epoch = {name: summary(values) for name, values in epochs.items()}
    for name in images:
        epoch[f"speedup_{name}"] = summary(np.divide(epochs[f"images_{name}"], epochs["cache"]))
    epoch["images_per_epoch"] = config.images_per_epoch
    image_list = [b["image"] for b in images["synthetic"]]
    epoch["profile"] = {
        "cache_read": iteration_seconds(cached, config.epoch_rounds),
        "explainer_steps": float(np.median(seconds["approximate"]) * len(image_list)),
        "performer_forward": forward_seconds(performer, image_list, config.epoch_rounds),
        **{f"pipeline_{name}": iteration_seconds(data, config.epoch_rounds)
           for name, data in images.items()},
        "cache_dtype": config.cache_dtype}
    results["epoch"] = epoch
    results["images_per_second"] = {name: config.images_per_epoch / epoch[name]["median"]
                                    for name in epochs}
    return results


def forward_seconds(performer, images, rounds):
    """Median seconds of the performer's taps over a list of in-memory image batches."""
    taps_model = performer.taps()
    taps = tf.function(lambda x: taps_model(x, training=False))

    def forward():
        for x in images:
            taps(x)["scores"].numpy()
    return float(np.median(interleaved_seconds({"forward": forward}, rounds)["forward"]))


def _tap_shapes(performer):
    """{tap name: shape of one example} of a performer's taps."""
    return {name: tuple(t.shape[1:]) for name, t in performer.taps().output.items()}


def full_vgg16(class_names, grid):
    """The built-in VGG-16 (random weights) whose pool4 is grid x grid: input 16 * grid px, 224
    for the VGG-16 shape's 14 x 14."""
    return build_performer("vgg16", None, class_names=class_names, input_size=16 * grid)


def full_vgg16_epochs(explainer, vgg16, config, work_dir):
    """Epochs of the VGG-16-shaped explainer on the same images two ways: the full VGG-16
    in-step ("images_vgg16", images already preprocessed in memory) and from a feature cache of
    those images written by write_feature_cache ("cache_vgg16"), interleaved round by round.

    `explainer` gets `vgg16` attached (its features have the shapes of the explainer's performer,
    so the same explainer trains from either source). Returns ({name: [seconds]}, {"cache_read",
    "performer_forward": seconds per epoch of each part alone})."""
    batch_size = config.vgg16_batch_size
    count = config.vgg16_epoch_batches * batch_size
    rng = np.random.default_rng(1)
    images = rng.uniform(-120, 120, (count,) + tuple(vgg16.input_size) + (3,)).astype(np.float32)
    labels = rng.integers(0, len(vgg16.class_names), count).astype(np.int32)
    image_batches = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels}).batch(batch_size)
    cache_dir = os.path.join(work_dir, "vgg16_full_cache")
    write_feature_cache(vgg16.taps(), image_batches, cache_dir, dtype=config.cache_dtype)
    cached = read_feature_cache(cache_dir, batch_size)
    explainer.attach_performer(vgg16.taps())
    explainer.make_train_function(force=True)
    epochs = epoch_seconds(explainer, {"cache_vgg16": cached, "images_vgg16": image_batches},
                           config.epoch_rounds)
    profile = {"cache_read": iteration_seconds(cached, config.epoch_rounds),
               "performer_forward": forward_seconds(
                   vgg16, [b["image"] for b in image_batches], config.epoch_rounds)}
    return epochs, profile


def vgg16_shaped(config, work_dir):
    """The VGG-16-shaped explainer: step times per filter loss, FLOPs against a float32 matmul,
    images/s from the cache and with the performer in-step, and (include_full_vgg16) the epoch
    with the full VGG-16 in-step against the same epoch from its feature cache."""
    batch_size = config.vgg16_batch_size
    performer = vgg16_top_performer(**config.vgg16_shape)
    vgg16 = None
    if config.include_full_vgg16:  # checked first: the step rounds before it take minutes
        vgg16 = full_vgg16(performer.class_names, performer.model.inputs[0].shape[1])
        if _tap_shapes(vgg16) != _tap_shapes(performer):
            raise ValueError(
                "include_full_vgg16 needs vgg16_shape at VGG-16's widths (channels 512, fc_units "
                f"4096): the full VGG-16's features are {_tap_shapes(vgg16)}, the explainer's "
                f"performer's {_tap_shapes(performer)}.")
    rng = np.random.default_rng(0)
    grid_shape = (batch_size,) + tuple(performer.model.inputs[0].shape[1:])
    labels = rng.integers(0, len(performer.class_names), batch_size).astype(np.int32)
    image_batch = {"image": tf.constant(rng.uniform(0, 1, grid_shape).astype(np.float32)),
                   "label": tf.constant(labels)}
    explainer, switch = _ready_explainer(performer, image_batch)
    results, seconds = step_benchmark(explainer, switch, _features(performer, image_batch),
                                      batch_size, config.vgg16_step_rounds, config.matmul_size)
    pool4_batches = tf.data.Dataset.from_tensors(image_batch).repeat(config.vgg16_epoch_batches)
    cache_dir = os.path.join(work_dir, "vgg16_cache")
    write_feature_cache(performer.taps(), pool4_batches, cache_dir, dtype=config.cache_dtype)
    datasets = {"cache": read_feature_cache(cache_dir, batch_size), "images_top": pool4_batches}
    epochs = epoch_seconds(explainer, datasets, config.epoch_rounds)
    images = config.vgg16_epoch_batches * batch_size
    if vgg16 is not None:
        full, profile = full_vgg16_epochs(explainer, vgg16, config, work_dir)
        epochs.update(full)
        results["epoch"] = {
            **{name: summary(values) for name, values in full.items()},
            "speedup_vgg16": summary(np.divide(full["images_vgg16"], full["cache_vgg16"])),
            "images_per_epoch": images, "image_side": int(vgg16.input_size[0]),
            "profile": {**profile, "explainer_steps": float(
                np.median(seconds["approximate"]) * config.vgg16_epoch_batches)}}
    results["images_per_second"] = {name: images / float(np.median(v))
                                    for name, v in epochs.items()}
    results["performer"] = ("vgg16_top_performer: pool4 (14 x 14 x 512) -> block5_conv1..3 -> pool5 "
                            "-> fc6, fc7, fc8; layers below the target do not change the cost of "
                            "a step from cached features")
    return results


def benchmark(config=None):
    """All training benchmarks; returns the training.json dict (see the module docstring)."""
    config = config or Config()
    start = time.perf_counter()
    synthetic.generate(config.synthetic_images, [None, 0, 1, 2], 64, seed=0)
    synthetic_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as work_dir:
        default = default_network(config, work_dir)
        vgg16 = vgg16_shaped(config, work_dir)
    return {
        "cache_speedup": default["epoch"]["speedup_jpeg"]["median"],
        "cache_speedup_vgg16": (vgg16["epoch"]["speedup_vgg16"]["median"] if "epoch" in vgg16
                                else None),
        "filter_loss_share_approx": vgg16["filter_loss_share"]["approximate"]["median"],
        "filter_loss_share_exact": vgg16["filter_loss_share"]["exact"]["median"],
        "flops_ratio_vgg16": vgg16["flops"]["ratio"],
        "synthetic_images_per_second": config.synthetic_images / synthetic_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "matmul_gflops": vgg16["flops"]["matmul_gflops"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "config": dataclasses.asdict(config),
        "default": default,
        "vgg16": vgg16,
    }
