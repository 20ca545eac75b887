"""Trains an explainer over a trained performer, then measures it on the test split.

  python -m tools.train_explainer --flagfile=configs/demo.flags \
      --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer
"""

import json
import os

import keras
from absl import app, logging

from tools import common
from tools.common import FLAGS
from tf_explainer import evaluation, training
from tf_explainer.build import build_explainer, initialize_statistics


def explainer_options():
    return dict(pool_position=FLAGS.pool_position, template_form=FLAGS.template_form,
                centre=FLAGS.centre, filter_loss=FLAGS.filter_loss,
                filter_loss_weight=FLAGS.filter_loss_weight, eta=FLAGS.eta,
                fusion_logit_scale=FLAGS.fusion_logit_scale,
                category_source=FLAGS.category_source,
                norm_positives_only=FLAGS.norm_positives_only)


def train_and_evaluate(performer_dir, model_dir):
    """Builds, initialises, trains (or reloads a finished) explainer; returns test metrics."""
    common.write_flags(model_dir)
    performer = training.load_performer(performer_dir)
    train, test = common.splits(common.data_source(), performer)
    saved = os.path.join(model_dir, training.EXPLAINER_FILE)
    if os.path.exists(saved) and not FLAGS.overwrite:
        logging.info("Reusing the finished explainer in %s (--overwrite retrains).", saved)
        explainer = keras.saving.load_model(saved)
        explainer.attach_performer(performer.taps())
    else:
        keras.utils.set_random_seed(FLAGS.seed)
        explainer = build_explainer(performer, **explainer_options())
        logging.info("Initialising explainer statistics from one pass over the training data.")
        initialize_statistics(explainer, train)
        optimizer = training.make_optimizer(
            FLAGS.optimizer, FLAGS.learning_rate, FLAGS.final_learning_rate,
            decay_steps=FLAGS.decay_epochs * training.steps_per_epoch(train))
        training.train_explainer(explainer, train, test, model_dir, FLAGS.epochs, optimizer)
    metrics = evaluation.evaluate(explainer, test, evaluation.performer_geometries(performer))
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir and --performer_dir are required.")
    metrics = train_and_evaluate(FLAGS.performer_dir, FLAGS.model_dir)
    print(json.dumps(metrics, indent=2))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
