r"""Caches the frozen performer's features of the training split in sharded TFRecord files.

  tf-explainer cache-features --preset=demo \
      --performer_dir=runs/demo/performer --feature_cache=runs/demo/cache
  tf-explainer train-explainer --preset=demo --feature_cache=runs/demo/cache ...

Images are cached unflipped, so training from the cache has no flip augmentation.
"""

import os

from absl import app, flags, logging

from tf_explainer.cli import common
from tf_explainer.cli.common import FLAGS
from tf_explainer.cache import SPEC_FILE, write_feature_cache
from tf_explainer.data import batches

flags.adopt_module_key_flags(common)


def cache(performer_dir, cache_dir):
    """Writes the training split's performer features into cache_dir/train, unless present."""
    out_dir = os.path.join(cache_dir, "train")
    if os.path.exists(os.path.join(out_dir, SPEC_FILE)) and not FLAGS.overwrite:
        logging.info("Reusing the feature cache in %s (--overwrite rewrites it).", out_dir)
        return
    performer = common.load_performer(performer_dir)
    source = common.data_source()
    train = batches(source.examples("train", performer.input_size), performer.preprocess,
                    FLAGS.batch_size, training=False)
    description = write_feature_cache(
        performer.taps(), train, out_dir, FLAGS.cache_shards,
        None if FLAGS.cache_compression == "none" else "GZIP", FLAGS.cache_dtype)
    logging.info("Cached %d training examples in %s", description["count"], out_dir)


def main(argv):
    del argv
    if not (FLAGS.performer_dir and FLAGS.feature_cache):
        raise app.UsageError("--performer_dir and --feature_cache are required.")
    cache(FLAGS.performer_dir, FLAGS.feature_cache)
