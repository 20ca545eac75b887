"""Training loops for the performer and the explainer, resumable after a crash.

Both train with `fit`: model.fit with a per-epoch backup (keras.callbacks.BackupAndRestore), or,
under MultiWorkerMirroredStrategy where model.fit fails in Keras 3.15 (keras issue 20585), a
custom loop (`custom_fit`) that runs the model's own train_step in strategy.run and checkpoints
every epoch. Either way, rerunning the same command after the process is killed resumes from the
last finished epoch. A finished run leaves its final model in the model directory and is not
retrained unless asked. Models are trained under the strategy they were built in
(model.distribute_strategy); only the chief writes into the model directory.
"""

import json
import os
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from tf_explainer.keras_compat import build_training_state
from tf_explainer.performers import PREPROCESSING, Performer, build_performer, preprocessing_name
from tf_explainer.progress import cardinality, logged, time_left
from tf_explainer.strategy import is_chief, writable_dir
from tf_explainer.tensorboard import EXPLAINER, PERFORMER, ModelTensorBoard

PERFORMER_FILE = "performer.keras"
PERFORMER_DESCRIPTION = "performer.json"
EXPLAINER_FILE = "explainer.keras"
TRAINING_RECORD = "training.json"  # an explainer run's epochs, balance and convergence
BACKUP_DIR = "backup"


def log_dir(model_dir):
    """Where a model directory's TensorBoard logs go (Keras' runs and the explainer's probe)."""
    return os.path.join(model_dir, "logs")


def _image_label(batch):
    return batch["image"], batch["label"]


def steps_per_epoch(dataset):
    """Batches in one pass over `dataset` (counted when tf.data cannot tell)."""
    return cardinality(dataset) or sum(1 for _ in dataset)


def uses_custom_loop(strategy):
    """Whether `fit` trains with `custom_fit`: model.fit fails under MultiWorkerMirroredStrategy."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


# What an epoch line shows, when the logs have it; every value is in the history and TensorBoard.
EPOCH_LINE_KEYS = ("loss", "accuracy", "reconstruction", "classification", "p",
                   "grad_ratio_filter_conv_interp_2", "val_loss", "val_accuracy",
                   "val_reconstruction", "val_classification", "val_p")


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class EpochLine(keras.callbacks.Callback):
    """Prints one short line per epoch naming the model that trains, with the main metrics, the
    epoch's time and the time left; during an epoch longer than `every_seconds`, a progress line
    each `every_seconds`. (Keras' own verbose=2 line holds every metric and no model name.)"""

    def __init__(self, title, every_seconds=30.0):
        super().__init__()
        self.title = title
        self.every_seconds = float(every_seconds)
        self._times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._last_print = time.time()

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        if now - self._last_print >= self.every_seconds:
            self._last_print = now
            steps = self.params.get("steps")
            left = (f", {_duration(time_left(batch + 1, steps, now - self._epoch_start))} left "
                    "in the epoch" if steps else "")
            print(f"  {self.title}: batch {batch + 1}{f'/{steps}' if steps else ''}{left}",
                  flush=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._times.append(time.time() - self._epoch_start)
        epochs = self.params.get("epochs") or epoch + 1
        metrics = ", ".join(f"{key} {float(logs[key]):.4g}" for key in EPOCH_LINE_KEYS if key in logs)
        left = time_left(len(self._times), len(self._times) + epochs - epoch - 1, sum(self._times))
        eta = f", at most {_duration(left)} left" if left > 0 else ""
        print(f"Epoch {epoch + 1}/{epochs} [{self.title}]: {metrics} "
              f"({_duration(self._times[-1])}{eta})", flush=True)


def fit(model, train, validation, epochs, model_dir, model_name, callbacks=(), verbose=2):
    """Trains a compiled model for `epochs` with TensorBoard logs in log_dir(model_dir),
    resuming from its backup in model_dir. Returns the history {name: [value per epoch]}.

    model_name: tag prefix of its TensorBoard scalars (tensorboard.PERFORMER or EXPLAINER), so
    the performer's and the explainers' curves never share a chart.
    verbose: 0 prints nothing; otherwise one EpochLine per epoch, titled with the model
    directory's name (performer, explainer, explainer_cls, ...)."""
    # TensorBoard last: callbacks before it may add to the epoch logs (e.g. GradientBalance).
    callbacks = [*callbacks, ModelTensorBoard(log_dir(model_dir), model_name)]
    backup = os.path.join(model_dir, BACKUP_DIR)
    if uses_custom_loop(model.distribute_strategy):
        return custom_fit(model, train, validation, epochs, backup, callbacks)
    if verbose:  # after TensorBoard: the line shows what the other callbacks added
        callbacks.append(EpochLine(os.path.basename(os.path.normpath(model_dir))))
    # double_checkpoint: a run killed while the backup is being rewritten leaves a truncated
    # weights file; Keras then restores the previous epoch's copy instead of failing to resume.
    history = model.fit(train, validation_data=validation, epochs=epochs, verbose=0,
                        shuffle=False,  # our tf.data pipelines shuffle (data/pipeline.py, cache.py)
                        callbacks=[keras.callbacks.BackupAndRestore(backup, double_checkpoint=True),
                                   *callbacks])
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _distribute(dataset, strategy):
    """Splits each global batch over the replicas. DATA sharding: every worker reads the same
    pipeline and keeps its share of each batch, so a step sees the same images as on one device."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _replicated(step, dataset, strategy):
    """`step` (train_step or test_step) on every replica's slice of a distributed batch."""
    @tf.function(input_signature=[dataset.element_spec])
    def run(batch):
        strategy.run(step, args=(batch,))
    return run


def _run_epoch(model, step, dataset, title, total):
    """One pass of `step` over `dataset` (progress logged as `title`); returns the model's
    metrics over the pass."""
    model.reset_metrics()
    for batch in logged(dataset, title, total):
        step(batch)
    # Metric variables are synchronised on read: every worker reads them (a collective op).
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def _save_checkpoint(checkpoint, backup, strategy, number):
    with writable_dir(backup, strategy) as folder:
        tf.train.CheckpointManager(checkpoint, folder, max_to_keep=1).save(checkpoint_number=number)


def custom_fit(model, train, validation, epochs, backup, callbacks=()):
    """model.fit's job as a loop over strategy.run(model.train_step), for any strategy.

    After each epoch the model, its optimizer and the epoch count are checkpointed in `backup`
    (by the chief; see strategy.writable_dir); a rerun restores the latest checkpoint and goes on
    with the next epoch; the backup is deleted when training ends, as BackupAndRestore does. With
    several workers, `backup` must be on storage every worker reads (the chief's checkpoint is
    what they all resume from). `callbacks` get the epoch-level hooks with the epoch's logs
    (validation ones prefixed "val_") and run on the chief only. Returns the history.
    """
    strategy = model.distribute_strategy
    first_batch = next(iter(train), None)
    if first_batch is None:
        raise ValueError("custom_fit got an empty training dataset (fewer examples than one batch "
                         "when the last partial batch is dropped?).")
    with strategy.scope():
        # What model.fit does before tracing: compile metrics, loss and optimizer variables
        # must exist before the step function is traced (creating them in it fails).
        build_training_state(model, first_batch)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    latest = tf.train.latest_checkpoint(backup)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resuming from %s: %d of %d epochs done.", latest, int(epoch.numpy()), epochs)
    train_data = _distribute(train, strategy)
    train_step = _replicated(model.train_step, train_data, strategy)
    if validation is not None:
        validation_data = _distribute(validation, strategy)
        test_step = _replicated(model.test_step, validation_data, strategy)
    callback_list = keras.callbacks.CallbackList(list(callbacks) if is_chief(strategy) else [],
                                                 model=model)
    history, logs = {}, {}
    callback_list.on_train_begin()
    for index in range(int(epoch.numpy()), epochs):
        callback_list.on_epoch_begin(index)
        logs = _run_epoch(model, train_step, train_data, f"Epoch {index + 1}/{epochs}",
                          cardinality(train))
        if validation is not None:
            logs.update({f"val_{name}": value for name, value in _run_epoch(
                model, test_step, validation_data, "Validation", cardinality(validation)).items()})
        epoch.assign(index + 1)
        _save_checkpoint(checkpoint, backup, strategy, index + 1)
        logging.info("Epoch %d/%d: %s", index + 1, epochs,
                     " - ".join(f"{name} {value:.4g}" for name, value in logs.items()))
        callback_list.on_epoch_end(index, logs)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    if is_chief(strategy):
        shutil.rmtree(backup, ignore_errors=True)
    return history


def save_model(model, model_dir, filename):
    """model.save(<model_dir>/<filename>) by the chief; other workers save to a temporary folder."""
    with writable_dir(model_dir, model.distribute_strategy) as folder:
        model.save(os.path.join(folder, filename))
    return os.path.join(model_dir, filename)


def train_performer(performer: Performer, train, test, model_dir, epochs, learning_rate=1e-3,
                    verbose=2):
    """Fits the performer on batches of {"image", "label"}: cross-entropy, Adam, cosine decay.

    Build the performer inside the strategy's scope; it is compiled in that scope here."""
    model = performer.model
    model.trainable = True
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch(train))
    with model.distribute_strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=performer.scores_are_logits),
                      metrics=["accuracy"])
    history = fit(model, train.map(_image_label), test.map(_image_label), epochs, model_dir,
                  PERFORMER, verbose=verbose)
    model.trainable = False
    return history


# The Performer fields that describe one's own Keras model besides the model, its class names,
# input size and preprocessing; performer.json records them to rebuild it.
_KERAS_PERFORMER_FIELDS = ("target_layer", "reconstruct_layers", "head_layers", "top_conv_layer",
                           "pool_layer", "decoder_init_layers", "decoder_activations",
                           "top_conv_output_layer", "scores_are_logits")


def save_performer(performer: Performer, model_dir, builtin=None):
    """Writes the performer's model and performer.json, what is needed to rebuild it.

    builtin: the built-in architecture's name; None for one's own Keras model (from_keras_model),
    which is saved whole with its layer names and the name of its preprocessing (one of
    performers.PREPROCESSING), so the model directory no longer needs the original file."""
    description = {"builtin": builtin, "class_names": list(performer.class_names),
                   "input_size": list(performer.input_size)}
    if builtin is None:
        description["keras"] = {name: getattr(performer, name) for name in _KERAS_PERFORMER_FIELDS}
        description["keras"]["preprocess"] = preprocessing_name(performer.preprocess)
    save_model(performer.model, model_dir, PERFORMER_FILE)
    if not is_chief(performer.model.distribute_strategy):
        return
    with open(os.path.join(model_dir, PERFORMER_DESCRIPTION), "w") as f:
        json.dump(description, f, indent=2)


def load_performer(model_dir) -> Performer:
    """The performer saved by save_performer in `model_dir`: a built-in one or one's own."""
    description_path = os.path.join(model_dir, PERFORMER_DESCRIPTION)
    if not os.path.exists(description_path):
        raise FileNotFoundError(f"No trained performer in {model_dir!r} (missing "
                                f"{PERFORMER_DESCRIPTION}); train one first (tf-explainer "
                                "train-performer) or name your own (--keras_model).")
    with open(description_path) as f:
        description = json.load(f)
    weights_path = os.path.join(model_dir, PERFORMER_FILE)
    if description.get("builtin") is None:
        fields = dict(description["keras"])
        preprocess = PREPROCESSING[fields.pop("preprocess")]
        return Performer(model=keras.saving.load_model(weights_path, compile=False),
                         class_names=description["class_names"], preprocess=preprocess,
                         input_size=tuple(description["input_size"]), **fields)
    return build_performer(description["builtin"], len(description["class_names"]),
                           class_names=description["class_names"],
                           input_size=tuple(description["input_size"]),
                           weights_path=weights_path)


@keras.saving.register_keras_serializable(package="tf_explainer")
class LogDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Log-linear decay from `initial` to `final` over `decay_steps`, then flat (the official
    ICNN schedule: 1e-4 -> 1e-5 over the first epochs, times a per-network factor)."""

    def __init__(self, initial, final, decay_steps):
        self.initial, self.final, self.decay_steps = float(initial), float(final), int(decay_steps)

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / max(self.decay_steps, 1), 1.0)
        return self.initial * tf.pow(self.final / self.initial, progress)

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "decay_steps": self.decay_steps}


def make_optimizer(name, learning_rate, final_learning_rate=None, decay_steps=1,
                   weight_decay=5e-4, momentum=0.9):
    """Adam, or SGD with momentum and weight decay, on the log-decay schedule (LogDecay)."""
    schedule = LogDecay(learning_rate, final_learning_rate or learning_rate, decay_steps)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    raise ValueError(f"Unknown optimizer {name!r}; use 'adam' or 'sgd'.")


class Convergence(keras.callbacks.Callback):
    """Stops training once the validation objective and p are on a plateau.

    After each epoch: the objective has plateaued when it has not improved on its best value by
    more than `min_delta` (relative) for `patience` epochs; p has plateaued when it moved less
    than `p_tolerance` over those epochs. Training stops when both hold, or when the objective
    has not improved for 2 x `patience` epochs whatever p does (p can keep drifting under the
    -eta log p pull while the reconstruction only gets worse), or at the epoch limit fit was
    given. `converged_epoch` is the 1-based epoch it stopped at, None if it never did.
    """

    def __init__(self, monitor="val_reconstruction", patience=2, min_delta=0.01, p_tolerance=0.01):
        super().__init__()
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.p_tolerance = float(p_tolerance)
        self.converged_epoch = None
        self._best = None
        self._since_best = 0
        self._p = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value, p = logs.get(self.monitor), logs.get("p")
        if value is None or p is None:
            return
        if self._best is None or value < self._best * (1 - self.min_delta):
            self._best, self._since_best = value, 0
        else:
            self._since_best += 1
        self._p.append(p)
        recent = self._p[-(self.patience + 1):]
        p_flat = len(recent) > self.patience and max(recent) - min(recent) < self.p_tolerance
        if (self._since_best >= self.patience and p_flat) or self._since_best >= 2 * self.patience:
            self.converged_epoch = epoch + 1
            self.model.stop_training = True
            logging.info("Converged after epoch %d: %s has not improved by %.0f%% for %d epochs "
                         "and p moved %.3g.", epoch + 1, self.monitor, 100 * self.min_delta,
                         self.patience, max(recent) - min(recent))


def train_explainer(explainer, train, test, model_dir, epochs, optimizer, verbose=2,
                    callbacks=()):
    """Trains the explainer (custom train_step) for at most `epochs` and saves it as
    explainer.keras.

    Build the explainer and create `optimizer` inside the strategy's scope; the explainer is
    compiled in that scope here, with loss scaling when its layers are mixed_float16. The
    explainer learns the epoch length here, for its kappa_t = kappa_0 / epoch schedule."""
    explainer.steps_per_epoch = steps_per_epoch(train)
    with explainer.distribute_strategy.scope():
        if explainer.needs_loss_scaling and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        explainer.compile(optimizer=optimizer)
    history = fit(explainer, train, test, epochs, model_dir, EXPLAINER, callbacks, verbose)
    path = save_model(explainer, model_dir, EXPLAINER_FILE)
    logging.info("Saved the explainer to %s", path)
    return history


def load_explainer(model_dir, performer: Performer):
    """The explainer saved in `model_dir`, with `performer` attached so it can take images."""
    path = os.path.join(model_dir, EXPLAINER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No trained explainer in {model_dir!r} (missing {EXPLAINER_FILE}); "
                                "run tf-explainer train-explainer first.")
    explainer = keras.saving.load_model(path)
    explainer.attach_performer(performer.taps())
    return explainer
