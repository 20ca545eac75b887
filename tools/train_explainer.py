"""Trains an explainer over a trained performer, then measures it (tools/evaluate.py).

  python -m tools.train_explainer --flagfile=configs/demo.flags \
      --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer
"""

import os

import keras
from absl import app, logging

from tools import common, evaluate
from tools.common import FLAGS
from tf_explainer import evaluation, training
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import read_feature_cache
from tf_explainer.strategy import is_chief, precision_policy
from tf_explainer.tensorboard import ExplainerTensorBoard


def explainer_options(objective=None):
    return dict(pool_position=FLAGS.pool_position, template_form=FLAGS.template_form,
                centre=FLAGS.centre, filter_loss=FLAGS.filter_loss,
                filter_loss_weight=FLAGS.filter_loss_weight, eta=FLAGS.eta,
                fusion_logit_scale=FLAGS.fusion_logit_scale, objective=objective or FLAGS.objective,
                category_source=FLAGS.category_source,
                norm_positives_only=FLAGS.norm_positives_only)


def train(performer_dir, model_dir, objective=None):
    """Builds, initialises and trains an explainer, unless model_dir holds a finished one.

    objective overrides --objective (the demo trains the Explainer+cls baseline with it).
    The performer and the explainer are built in --strategy's scope; the explainer (not the frozen
    performer, whose features stay exact) under the --mixed_precision policy."""
    strategy = common.strategy()  # first: multi_worker needs it before any other TensorFlow work
    if is_chief(strategy):
        common.write_flags(model_dir)
    with strategy.scope():
        performer = training.load_performer(performer_dir)
    saved = os.path.join(model_dir, training.EXPLAINER_FILE)
    if os.path.exists(saved) and not FLAGS.overwrite:
        logging.info("Reusing the finished explainer in %s (--overwrite retrains).", saved)
        return
    train_data, test_data = common.splits(common.data_source(), performer,
                                          drop_remainder=common.drop_remainder())
    if FLAGS.feature_cache:
        logging.info("Training from the feature cache in %s; flip augmentation is not available "
                     "with the cache (features were computed once, unflipped).", FLAGS.feature_cache)
        train_data = read_feature_cache(
            os.path.join(FLAGS.feature_cache, "train"), FLAGS.batch_size, shuffle_buffer=4096,
            seed=FLAGS.seed, drop_remainder=common.drop_remainder())
    keras.utils.set_random_seed(FLAGS.seed)
    with strategy.scope(), precision_policy(FLAGS.mixed_precision):
        explainer = build_explainer(performer, **explainer_options(objective))
        optimizer = training.make_optimizer(
            FLAGS.optimizer, FLAGS.learning_rate, FLAGS.final_learning_rate,
            decay_steps=FLAGS.decay_epochs * training.steps_per_epoch(train_data))
    logging.info("Initialising explainer statistics from one pass over the training data.")
    initialize_statistics(explainer, train_data)
    probe = ExplainerTensorBoard(
        training.log_dir(model_dir), next(iter(test_data)), evaluation.performer_geometries(performer),
        hparams={"learning_rate": FLAGS.learning_rate, "optimizer": FLAGS.optimizer,
                 "objective": objective or FLAGS.objective})
    training.train_explainer(explainer, train_data, test_data, model_dir, FLAGS.epochs, optimizer,
                             callbacks=[probe])


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir and --performer_dir are required.")
    train(FLAGS.performer_dir, FLAGS.model_dir)
    if is_chief(common.strategy()):  # the other workers of a cluster only train
        print(evaluation.summary_text(evaluate.evaluate_dirs(FLAGS.performer_dir, FLAGS.model_dir)))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
