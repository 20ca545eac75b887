"""`make bench`: explainer training throughput on the default performer (JSON output).

Writes benchmarks/results/training.json: images/s per filter loss with features computed in-step,
and one epoch trained from images vs from the feature cache (`cache_speedup`). Random weights are
enough: the cost of a step does not depend on what the weights have learned.
"""

import json
import os
import platform
import resource
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import read_feature_cache, write_feature_cache
from tf_explainer.performers import build_performer

flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 30, "Timed training steps (after warm-up).")
flags.DEFINE_string("output", "benchmarks/results/training.json", "Where to write results.")
FLAGS = flags.FLAGS


def _images(batch_size, num_classes, seed=0, count=4):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch_size * count, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch_size * count).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return data.batch(batch_size).cache()


def explainer_training_throughput(filter_loss, batch_size, steps):
    """Images per second of Explainer.fit on the small_vgg default, features computed in-step."""
    keras.utils.set_random_seed(0)
    performer = build_performer("small_vgg", 4)
    explainer = build_explainer(performer, filter_loss=filter_loss)
    data = _images(batch_size, 4)
    initialize_statistics(explainer, data)
    explainer.compile(optimizer="adam")
    explainer.fit(data.repeat(), steps_per_epoch=5, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    explainer.fit(data.repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"images_per_second": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps}


def cache_speedup(batch_size, batches=16):
    """Seconds of one explainer epoch from images vs from the feature cache (default network)."""
    keras.utils.set_random_seed(0)
    performer = build_performer("small_vgg", 4)
    images = _images(batch_size, 4, count=batches)
    with tempfile.TemporaryDirectory() as cache_dir:
        write_feature_cache(performer.taps(), images, cache_dir, shards=4)
        cached = read_feature_cache(cache_dir).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        seconds = {}
        for name, data in (("images", images), ("cache", cached)):
            explainer = build_explainer(performer)
            initialize_statistics(explainer, images.take(2))
            explainer.compile(optimizer="adam")
            explainer.fit(data.take(2), epochs=1, verbose=0)  # trace and warm up
            start = time.perf_counter()
            explainer.fit(data, epochs=1, verbose=0)
            seconds[name] = time.perf_counter() - start
    return {"epoch_seconds_images": seconds["images"], "epoch_seconds_cache": seconds["cache"],
            "images_per_epoch": batches * batch_size,
            "cache_speedup": seconds["images"] / seconds["cache"]}


def main(argv):
    del argv
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "tensorflow": tf.__version__, "keras": keras.__version__},
               "batch_size": FLAGS.batch_size}
    for loss in ("approximate", "exact", "none"):
        results[f"default_{loss}"] = explainer_training_throughput(loss, FLAGS.batch_size, FLAGS.steps)
    results["default_cache"] = cache_speedup(FLAGS.batch_size)
    results["cache_speedup"] = results["default_cache"]["cache_speedup"]
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
