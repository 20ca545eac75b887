"""Trains a built-in performer on the synthetic parts data or a landmark manifest.

  tf-explainer train-performer --preset=demo --model_dir=runs/demo/performer

Your own trained Keras model needs no training here: give it to train-explainer (--keras_model).
"""

import json
import os

import keras
from absl import app, flags, logging

from tf_explainer.cli import common
from tf_explainer.cli.common import FLAGS
from tf_explainer import training
from tf_explainer.performers import build_performer
from tf_explainer.strategy import is_chief, precision_policy

flags.adopt_module_key_flags(common)


def train(model_dir):
    """Trains and saves the performer in model_dir, unless a finished one is there.

    The performer is built in --strategy's scope under the --mixed_precision policy."""
    strategy = common.strategy()  # first: multi_worker needs it before any other TensorFlow work
    if os.path.exists(os.path.join(model_dir, training.PERFORMER_DESCRIPTION)) and not FLAGS.overwrite:
        logging.info("%s already holds a trained performer; pass --overwrite to retrain.", model_dir)
        return
    chief = is_chief(strategy)
    if chief:
        common.write_flags(model_dir, __name__, {"model_dir": model_dir})
    keras.utils.set_random_seed(FLAGS.seed)
    source = common.data_source()
    with strategy.scope(), precision_policy(FLAGS.mixed_precision):
        performer = build_performer(FLAGS.performer, len(source.class_names),
                                    class_names=source.class_names, input_size=FLAGS.input_size,
                                    weights_path=FLAGS.weights_path)
    train, test = common.splits(source, performer, drop_remainder=common.drop_remainder())
    history = training.train_performer(performer, train, test, model_dir,
                                       FLAGS.performer_epochs, FLAGS.performer_learning_rate)
    training.save_performer(performer, model_dir, FLAGS.performer)
    if not chief:
        return
    with open(os.path.join(model_dir, "history.json"), "w") as f:
        json.dump(history, f, indent=2)
    logging.info("Performer test accuracy %.4f", history["val_accuracy"][-1])


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    if FLAGS.keras_model:
        raise app.UsageError("train-performer trains built-in performers; your own trained model "
                             "(--keras_model) goes straight to train-explainer.")
    train(FLAGS.model_dir)
