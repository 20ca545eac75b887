"""Flags shared by the commands, so one preset (configs/*.flags) drives all of them.

Defaults are the tuned values of the demo preset (configs/README.md says how they were chosen).
Only this package reads flags; it passes plain values to the library.
"""

import copy
import functools
import os
import time

import keras
from absl import app, flags, logging

from tf_explainer import training
from tf_explainer.balance import DEFAULT_BALANCE
from tf_explainer.data import batches, manifest_source, synthetic_source
from tf_explainer.explainer import CATEGORY_SOURCES, POOL_POSITIONS
from tf_explainer.filter_loss import registered_filter_losses
from tf_explainer.performers import PERFORMERS, PREPROCESSING, from_keras_model
from tf_explainer.strategy import PRECISIONS, STRATEGIES, make_strategy
from tf_explainer.templates import FORMS

FLAGS = flags.FLAGS

flags.DEFINE_string("preset", None, "Name of a preset shipped with the package (tf-explainer --help "
                    "lists them): the same as --flagfile=<its .flags file>; later flags override it.")

# Data.
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "manifest"], "Where images come from.")
flags.DEFINE_string("data_dir", None, "Manifest folder (images + manifest.jsonl) for --dataset=manifest.")
flags.DEFINE_string("category", None, "Train 'category vs rest'; all categories when unset.")
flags.DEFINE_enum("negatives", "sample", ["manifest", "sample", "none"],
                  "Manifest negatives: from the manifest, sampled background crops, or none.")
flags.DEFINE_integer("num_train", 8000, "Synthetic training images.")
flags.DEFINE_integer("num_test", 800, "Synthetic test images.")
flags.DEFINE_integer("num_categories", 3, "Synthetic creature categories.")
flags.DEFINE_integer("seed", 0, "Seed for data generation, shuffling and initialisation.")

# Performer.
flags.DEFINE_enum("performer", "small_vgg", PERFORMERS, "Built-in performer architecture.")
flags.DEFINE_string("weights_path", None, "Local weights file for the performer (e.g. VGG-16 .h5).")
flags.DEFINE_integer("input_size", None, "Built-in performer's input side in pixels; the network's "
                     "own when unset.")
flags.DEFINE_integer("performer_epochs", 20, "Performer training epochs.")
flags.DEFINE_float("performer_learning_rate", 1e-3, "Performer Adam learning rate.")

# Your own Keras performer (instead of a built-in one).
flags.DEFINE_string("keras_model", None,
                    "Your own trained Keras image classifier (.keras file) as the performer, with "
                    "--target_layer, --reconstruct_layers and --head_layers. The first command "
                    "that gets it records it in --performer_dir (performer.json with the layer "
                    "names and a copy of the model); later commands need only --performer_dir.")
flags.DEFINE_string("target_layer", None, "--keras_model: the conv layer (post-ReLU map) the "
                    "explainer paraphrases; 'outer/inner' inside nested models.")
flags.DEFINE_list("reconstruct_layers", None, "--keras_model: the upper layers the explainer "
                  "reconstructs, in order (e.g. fc1,fc2).")
flags.DEFINE_list("head_layers", [], "--keras_model: the layers from the last reconstructed "
                  "layer to the class scores (empty when that layer gives the scores).")
flags.DEFINE_string("top_conv_layer", None, "--keras_model: the top conv layer (initialises the "
                    "explainer's first conv; its post-ReLU map is measured beside it).")
flags.DEFINE_string("pool_layer", None, "--keras_model: the pooling layer after the top conv, "
                    "copied into the explainer.")
flags.DEFINE_list("class_names", None, "--keras_model: names of the model's classes in output "
                  "order; the data's class names when unset.")
flags.DEFINE_enum("keras_preprocess", "none", list(PREPROCESSING),
                  "--keras_model: what the model takes: none ([0, 255] RGB as it is), zero_one, "
                  "minus_one_one or caffe (keras.applications VGG).")

# Explainer.
flags.DEFINE_string("performer_dir", None, "Model directory of a trained performer.")
flags.DEFINE_enum("pool_position", "B", POOL_POSITIONS, "A: mask then pool; B: pool then mask.")
flags.DEFINE_enum("template_form", "paper", FORMS, "Part template form (docs/method.md).")
flags.DEFINE_enum("centre", "argmax", ["argmax", "centroid"], "How a mask finds its part centre.")
flags.DEFINE_enum("filter_loss", "approximate", registered_filter_losses(), "Filter loss.")
flags.DEFINE_float("filter_loss_weight", 1.0,
                   "lambda: multiplier on the authors' filter-loss scale 1e-6 / epoch. Replaced by "
                   "the calibrated value when --filter_loss_balance > 0.")
flags.DEFINE_float("filter_loss_balance", DEFAULT_BALANCE,
                   "Sets lambda so that ||grad filter loss|| / ||grad reconstruction|| on "
                   "conv-interp-2 equals this at the start of training (docs/method.md, Balance; "
                   "at 1 the part filters of a category become copies of each other); "
                   "0 uses --filter_loss_weight as given.")
flags.DEFINE_float("eta", 0.1, "eta: weight of -log p.")
flags.DEFINE_float("fusion_logit_scale", 30.0,
                   "Learning-rate multiplier for the fusion weight p under Adam (see TrackFusion).")
flags.DEFINE_boolean("use_masks", True, "Apply the part masks (False: the 'no masks' ablation).")
flags.DEFINE_boolean("learn_sigma", True, "Train the norms' sigma with the reconstruction gradient "
                     "besides the running statistic (False: moving average only).")
flags.DEFINE_enum("category_source", "prediction", CATEGORY_SOURCES,
                  "An image's category: the performer's prediction or the ground-truth label.")
flags.DEFINE_boolean("norm_positives_only", True, "Estimate norms on positive images only.")
flags.DEFINE_enum("objective", "reconstruction", ["reconstruction", "classification"],
                  "reconstruction: the method; classification: the 'Explainer+cls' baseline.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Explainer optimiser.")
flags.DEFINE_float("learning_rate", 1e-4, "Explainer initial learning rate (1e-3 wrecks the "
                   "decoder; configs/README.md).")
flags.DEFINE_float("final_learning_rate", 1e-4, "Learning rate after the log decay.")
flags.DEFINE_integer("decay_epochs", 10, "Epochs of log decay (docs/method.md).")
flags.DEFINE_integer("epochs", 12, "Explainer training epochs at most (see --patience).")
flags.DEFINE_integer("patience", 2, "Stop once the validation objective has not improved by "
                     "--min_delta for this many epochs and p moved less than --p_tolerance over "
                     "them; 0 trains all --epochs.")
flags.DEFINE_float("min_delta", 0.01, "Relative improvement of the validation objective that counts.")
flags.DEFINE_float("p_tolerance", 0.01, "Largest change of p over --patience epochs on a plateau.")

# Feature cache (cache-features writes it, train_explainer reads it).
flags.DEFINE_string("feature_cache", None, "Folder of cached performer features; the explainer "
                    "trains from <feature_cache>/train (no flip augmentation) when set.")
flags.DEFINE_integer("cache_shards", 4, "TFRecord shards of the feature cache.")
flags.DEFINE_enum("cache_compression", "none", ["none", "gzip"], "Feature cache compression.")
flags.DEFINE_enum("cache_dtype", "float32", ["float32", "bfloat16"], "Stored float type.")

# Evaluation and report.
flags.DEFINE_integer("probe_images", 4, "Test images whose part contributions are reported.")

# Scaling out (both training tools).
flags.DEFINE_enum("strategy", "default", STRATEGIES,
                  "tf.distribute strategy: default (none), one_device, mirrored (this machine's GPUs), "
                  "multi_worker (the cluster in TF_CONFIG; custom training loop) or tpu (see --tpu).")
flags.DEFINE_string("tpu", None, "For --strategy=tpu: TPU name, grpc://host:port or 'local' (TPU VM); "
                    "unset: found from the environment.")
flags.DEFINE_enum("mixed_precision", "none", PRECISIONS,
                  "Keras mixed-precision policy of the trained network; variables, statistics and "
                  "losses stay float32.")

# Both.
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the strategy's replicas).")
flags.DEFINE_string("model_dir", None, "Where the tool writes its model, logs and flags.")
flags.DEFINE_boolean("overwrite", False, "Retrain even when the model directory holds a finished model.")


@functools.lru_cache(maxsize=1)
def data_source():
    """The data source the flags describe; built once per process (the demo reuses it)."""
    if FLAGS.dataset == "manifest":
        if not FLAGS.data_dir:
            raise flags.ValidationError("--dataset=manifest needs --data_dir.")
        return manifest_source(FLAGS.data_dir, category=FLAGS.category, negatives=FLAGS.negatives,
                               seed=FLAGS.seed)
    return synthetic_source(FLAGS.num_train, FLAGS.num_test, num_categories=FLAGS.num_categories,
                            seed=FLAGS.seed, category=FLAGS.category)


@functools.lru_cache(maxsize=1)
def strategy():
    """The strategy the flags name; created once per process (multi_worker must be created before
    any other TensorFlow work, and only once; the demo trains several models in one process)."""
    return make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)


def drop_remainder():
    """Whether the training tools drop each epoch's last partial batch: yes with several replicas,
    where it could leave a replica an empty slice, which TF 2.21's oneDNN CPU convolution
    mishandles (it returns the input's shape) and training fails."""
    return strategy().num_replicas_in_sync > 1


def splits(source, performer, training_flip=True, drop_remainder=False):
    """(train, test) batches for `performer`'s input size and preprocessing."""
    train = batches(source.examples("train", performer.input_size), performer.preprocess,
                    FLAGS.batch_size, training=True, seed=FLAGS.seed, flip=training_flip,
                    landmark_names=source.landmark_names, drop_remainder=drop_remainder)
    test = batches(source.examples("test", performer.input_size), performer.preprocess,
                   FLAGS.batch_size, training=False, drop_remainder=drop_remainder)
    return train, test


def write_flags(model_dir, module_name, overrides=None):
    """Saves <model_dir>/flags.txt, a flagfile that reruns the same job: every flag key to the
    command module `module_name`, with `overrides` ({flag name: value}) where the job used other
    values than the flags' (e.g. the demo's comparison runs, their model directories)."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "flags.txt")
    lines = []
    for flag in FLAGS.get_key_flags_for_module(module_name):
        if flag.name == "preset":  # already expanded into the other flags
            continue
        if overrides and flag.name in overrides:
            flag = copy.deepcopy(flag)
            flag.value = overrides[flag.name]
        lines.append(flag.serialize())
    with open(path, "w") as f:
        f.write("\n".join(line for line in lines if line) + "\n")
    logging.info("Effective flags written to %s", path)


def keras_performer():
    """One's own performer from --keras_model and the layer flags."""
    if not (FLAGS.target_layer and FLAGS.reconstruct_layers):
        raise app.UsageError("--keras_model needs --target_layer and --reconstruct_layers "
                             "(and --head_layers unless the last reconstructed layer gives the "
                             "class scores).")
    model = keras.saving.load_model(FLAGS.keras_model, compile=False)
    return from_keras_model(model, FLAGS.target_layer, FLAGS.reconstruct_layers,
                            head_layers=FLAGS.head_layers,
                            class_names=FLAGS.class_names or data_source().class_names,
                            preprocess=PREPROCESSING[FLAGS.keras_preprocess],
                            top_conv_layer=FLAGS.top_conv_layer, pool_layer=FLAGS.pool_layer)


def load_performer(performer_dir):
    """The performer recorded in performer_dir. With --keras_model, when performer_dir holds no
    performer yet, the user's model is recorded there first (training.save_performer)."""
    if not performer_dir:
        raise app.UsageError("--performer_dir is required.")
    recorded = os.path.exists(os.path.join(performer_dir, training.PERFORMER_DESCRIPTION))
    if FLAGS.keras_model and not recorded:
        performer = keras_performer()
        training.save_performer(performer, performer_dir)
        logging.info("Recorded %s as the performer in %s.", FLAGS.keras_model, performer_dir)
        return performer
    if FLAGS.keras_model:
        logging.info("Using the performer recorded in %s (not --keras_model).", performer_dir)
    return training.load_performer(performer_dir)


class Stopwatch:
    """Seconds since it was made."""

    def __init__(self):
        self.start = time.time()

    def seconds(self):
        return round(time.time() - self.start, 1)
