"""Caches the frozen performer's features of the training split in sharded TFRecord files.

  python -m tools.cache_features --flagfile=configs/demo.flags \
      --performer_dir=runs/demo/performer --feature_cache=runs/demo/cache
  python -m tools.train_explainer --flagfile=configs/demo.flags --feature_cache=runs/demo/cache ...

Images are cached unflipped, so training from the cache has no flip augmentation.
"""

import os

from absl import app

from tools import common
from tools.common import FLAGS
from tf_explainer import training
from tf_explainer.cache import write_feature_cache
from tf_explainer.data import batches


def main(argv):
    del argv
    if not (FLAGS.performer_dir and FLAGS.feature_cache):
        raise app.UsageError("--performer_dir and --feature_cache are required.")
    performer = training.load_performer(FLAGS.performer_dir)
    source = common.data_source()
    train = batches(source.examples("train", performer.input_size), performer.preprocess,
                    FLAGS.batch_size, training=False)
    description = write_feature_cache(
        performer.taps(), train, os.path.join(FLAGS.feature_cache, "train"), FLAGS.cache_shards,
        None if FLAGS.cache_compression == "none" else "GZIP", FLAGS.cache_dtype)
    print(f"Cached {description['count']} training examples in {FLAGS.feature_cache}/train")


if __name__ == "__main__":
    app.run(main)
