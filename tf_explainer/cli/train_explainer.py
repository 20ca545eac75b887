r"""Trains an explainer over a trained performer, then measures it (as `tf-explainer evaluate`).

  tf-explainer train-explainer --preset=demo \
      --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer

Your own Keras classifier as the performer (recorded in --performer_dir on first use):

  tf-explainer train-explainer --preset=demo --keras_model=my_model.keras \
      --target_layer=block4_relu --reconstruct_layers=fc1,fc2 --head_layers=predictions \
      --class_names=background,bird --performer_dir=runs/mine/performer --model_dir=runs/mine/e
"""

import json
import os

import keras
import tensorflow as tf
from absl import app, flags, logging

from tf_explainer.cli import common, evaluate
from tf_explainer.cli.common import FLAGS
from tf_explainer import evaluation, training
from tf_explainer.balance import GradientBalance, calibrated_filter_loss_weight
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.cache import read_feature_cache
from tf_explainer.strategy import is_chief, precision_policy
from tf_explainer.tensorboard import ExplainerTensorBoard

flags.adopt_module_key_flags(common)


# Explainer options that the demo's ablations override; each has a flag of the same name.
OPTION_FLAGS = ("pool_position", "template_form", "centre", "filter_loss", "filter_loss_weight",
                "eta", "fusion_logit_scale", "objective", "category_source",
                "norm_positives_only", "use_masks", "learn_sigma")
BALANCE_BATCHES = 2  # validation batches the gradient-norm ratios are measured on


def explainer_options(overrides=None):
    """Explainer keyword arguments from the flags, with `overrides` ({flag name: value})."""
    options = {name: getattr(FLAGS, name) for name in OPTION_FLAGS}
    options.update(overrides or {})
    # The authors' sharpness step (SGD, lr multiplier 0.05 on a gradient of 1e4 per unit, over
    # a summed batch) as a per-step rate toward the target, for any optimizer.
    options["sharpness_rate"] = min(1.0, 0.05 * FLAGS.learning_rate * 1e4 / FLAGS.batch_size)
    return options


def train(performer_dir, model_dir, **overrides):
    """Builds, initialises and trains an explainer, unless model_dir holds a finished one.

    overrides: flag values to use instead of the flags' (the demo's baseline and ablations, e.g.
    objective="classification"); model_dir/flags.txt records them with every other flag and
    both directories, so `--flagfile=<model_dir>/flags.txt` reruns this very job. The performer and
    the explainer are built in --strategy's scope; the explainer (not the frozen performer, whose
    features stay exact) under the --mixed_precision policy. Returns the training record
    (history, balance per epoch, converged epoch, lambda), also saved as model_dir/training.json.
    """
    strategy = common.strategy()  # first: multi_worker needs it before any other TensorFlow work
    if overrides.get("objective") == "classification":
        overrides.setdefault("category_source", "label")  # the baseline trains on labels
    if overrides.get("filter_loss_weight") == 0 or overrides.get("filter_loss") == "none":
        overrides.setdefault("filter_loss_balance", 0.0)
    if is_chief(strategy):
        common.write_flags(model_dir, __name__,
                           {**overrides, "performer_dir": performer_dir, "model_dir": model_dir})
    with strategy.scope():
        performer = common.load_performer(performer_dir)
    saved = os.path.join(model_dir, training.EXPLAINER_FILE)
    if os.path.exists(saved) and not FLAGS.overwrite:
        logging.info("Reusing the finished explainer in %s (--overwrite retrains).", saved)
        return None
    source = common.data_source()
    train_data, test_data = common.splits(source, performer, drop_remainder=common.drop_remainder())
    if FLAGS.feature_cache:
        logging.info("Training from the feature cache in %s; flip augmentation is not available "
                     "with the cache (features were computed once, unflipped).", FLAGS.feature_cache)
        train_data = read_feature_cache(
            os.path.join(FLAGS.feature_cache, "train"), FLAGS.batch_size, shuffle_buffer=4096,
            seed=FLAGS.seed, drop_remainder=common.drop_remainder())
        # Known length: Keras then knows where an epoch ends (no "ran out of data" warning).
        train_data = train_data.apply(tf.data.experimental.assert_cardinality(
            training.steps_per_epoch(train_data)))
    keras.utils.set_random_seed(FLAGS.seed)
    options = explainer_options({k: v for k, v in overrides.items() if k in OPTION_FLAGS})
    balance_target = overrides.get("filter_loss_balance", FLAGS.filter_loss_balance)
    with strategy.scope(), precision_policy(FLAGS.mixed_precision):
        explainer = build_explainer(performer, **options)
        optimizer = training.make_optimizer(
            FLAGS.optimizer, FLAGS.learning_rate, FLAGS.final_learning_rate,
            decay_steps=FLAGS.decay_epochs * training.steps_per_epoch(train_data))
    logging.info("Initialising explainer statistics from one pass over the training data.")
    initialize_statistics(explainer, train_data)
    balance_batches = list(test_data.take(BALANCE_BATCHES))
    if balance_target > 0:  # against the run's objective: reconstruction, or the baseline's
        explainer.filter_loss_weight = calibrated_filter_loss_weight(
            explainer, balance_batches, balance_target)
    epochs = overrides.get("epochs", FLAGS.epochs)
    # Every setting that can differ between runs, so HParams compares them side by side; lambda as
    # trained (calibrated when the balance is on).
    settings = {**options, "filter_loss_weight": explainer.filter_loss_weight,
                "filter_loss_balance": balance_target, "epochs": epochs,
                "learning_rate": FLAGS.learning_rate, "final_learning_rate": FLAGS.final_learning_rate,
                "decay_epochs": FLAGS.decay_epochs, "optimizer": FLAGS.optimizer,
                "batch_size": FLAGS.batch_size, "patience": FLAGS.patience,
                "feature_cache": bool(FLAGS.feature_cache), "mixed_precision": FLAGS.mixed_precision,
                "seed": FLAGS.seed}
    probe = ExplainerTensorBoard(
        training.log_dir(model_dir), next(iter(test_data)), evaluation.performer_geometries(performer),
        hparams=settings, run_name=os.path.basename(os.path.normpath(model_dir)),
        class_names=performer.class_names, landmark_names=source.landmark_names)
    balance = GradientBalance(balance_batches)
    convergence = training.Convergence(f"val_{explainer.objective}", FLAGS.patience,
                                       FLAGS.min_delta, FLAGS.p_tolerance)
    callbacks = [balance, probe] + ([convergence] if FLAGS.patience > 0 else [])
    history = training.train_explainer(explainer, train_data, test_data, model_dir, epochs,
                                       optimizer, callbacks=callbacks)
    record = {"epochs_trained": len(history.get("loss", [])), "max_epochs": epochs,
              "converged_epoch": convergence.converged_epoch,
              "steps": int(explainer.optimizer.iterations.numpy()),
              "filter_loss_weight": explainer.filter_loss_weight,
              "gradient_ratios": balance.history, "history": history}
    if is_chief(strategy):
        with open(os.path.join(model_dir, training.TRAINING_RECORD), "w") as f:
            json.dump(record, f, indent=2)
    return record


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir and --performer_dir are required.")
    train(FLAGS.performer_dir, FLAGS.model_dir)
    if is_chief(common.strategy()):  # the other workers of a cluster only train
        print(evaluation.summary_text(evaluate.evaluate_dirs(FLAGS.performer_dir, FLAGS.model_dir)))
