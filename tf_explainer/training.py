"""Training loops for the performer and the explainer, resumable after a crash.

Both keep a backup each epoch (keras.callbacks.BackupAndRestore), so rerunning the same command
after the process is killed resumes from the last finished epoch. A finished run leaves its final
model in the model directory and is not retrained unless asked.
"""

import json
import os

import keras
import tensorflow as tf
from absl import logging

from tf_explainer.performers import Performer, build_performer
from tf_explainer.progress import cardinality

PERFORMER_FILE = "performer.keras"
PERFORMER_DESCRIPTION = "performer.json"
EXPLAINER_FILE = "explainer.keras"


def log_dir(model_dir):
    """Where a model directory's TensorBoard logs go (Keras' runs and the explainer's probe)."""
    return os.path.join(model_dir, "logs")


def _callbacks(model_dir, extra=()):
    return [keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup")),
            keras.callbacks.TensorBoard(log_dir(model_dir)),
            *extra]


def _image_label(batch):
    return batch["image"], batch["label"]


def steps_per_epoch(dataset):
    """Batches in one pass over `dataset` (counted when tf.data cannot tell)."""
    return cardinality(dataset) or sum(1 for _ in dataset)


def train_performer(performer: Performer, train, test, model_dir, epochs, learning_rate=1e-3,
                    verbose=2):
    """Fits the performer on batches of {"image", "label"}: cross-entropy, Adam, cosine decay."""
    os.makedirs(model_dir, exist_ok=True)
    model = performer.model
    model.trainable = True
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch(train))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=performer.scores_are_logits),
                  metrics=["accuracy"])
    history = model.fit(train.map(_image_label), validation_data=test.map(_image_label),
                        epochs=epochs, callbacks=_callbacks(model_dir), verbose=verbose)
    model.trainable = False
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def save_performer(performer: Performer, model_dir, builtin):
    """Writes the performer's weights and what is needed to rebuild its description."""
    os.makedirs(model_dir, exist_ok=True)
    performer.model.save(os.path.join(model_dir, PERFORMER_FILE))
    with open(os.path.join(model_dir, PERFORMER_DESCRIPTION), "w") as f:
        json.dump({"builtin": builtin, "class_names": list(performer.class_names),
                   "input_size": list(performer.input_size)}, f, indent=2)


def load_performer(model_dir) -> Performer:
    """The built-in performer saved by save_performer in `model_dir`."""
    description_path = os.path.join(model_dir, PERFORMER_DESCRIPTION)
    if not os.path.exists(description_path):
        raise FileNotFoundError(f"No trained performer in {model_dir!r} (missing "
                                f"{PERFORMER_DESCRIPTION}); run tools/train_performer.py first.")
    with open(description_path) as f:
        description = json.load(f)
    return build_performer(description["builtin"], len(description["class_names"]),
                           class_names=description["class_names"],
                           input_size=tuple(description["input_size"]),
                           weights_path=os.path.join(model_dir, PERFORMER_FILE))


@keras.saving.register_keras_serializable(package="tf_explainer")
class LogDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Log-linear decay from `initial` to `final` over `decay_steps`, then flat (the official
    ICNN schedule, SPEC 2.5: 1e-4 -> 1e-5 over the first epochs, times a per-network factor)."""

    def __init__(self, initial, final, decay_steps):
        self.initial, self.final, self.decay_steps = float(initial), float(final), int(decay_steps)

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / max(self.decay_steps, 1), 1.0)
        return self.initial * tf.pow(self.final / self.initial, progress)

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "decay_steps": self.decay_steps}


def make_optimizer(name, learning_rate, final_learning_rate=None, decay_steps=1,
                   weight_decay=5e-4, momentum=0.9):
    """Adam, or SGD with momentum and weight decay, on the log-decay schedule of SPEC 2.5."""
    schedule = LogDecay(learning_rate, final_learning_rate or learning_rate, decay_steps)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    raise ValueError(f"Unknown optimizer {name!r}; use 'adam' or 'sgd'.")


def train_explainer(explainer, train, test, model_dir, epochs, optimizer, verbose=2,
                    callbacks=()):
    """Fits the explainer (custom train_step) and saves it as explainer.keras."""
    os.makedirs(model_dir, exist_ok=True)
    explainer.compile(optimizer=optimizer)
    history = explainer.fit(train, validation_data=test, epochs=epochs,
                            callbacks=_callbacks(model_dir, callbacks), verbose=verbose)
    explainer.save(os.path.join(model_dir, EXPLAINER_FILE))
    logging.info("Saved the explainer to %s", os.path.join(model_dir, EXPLAINER_FILE))
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def load_explainer(model_dir, performer: Performer):
    """The explainer saved in `model_dir`, with `performer` attached so it can take images."""
    path = os.path.join(model_dir, EXPLAINER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No trained explainer in {model_dir!r} (missing {EXPLAINER_FILE}); "
                                "run tools/train_explainer.py first.")
    explainer = keras.saving.load_model(path)
    explainer.attach_performer(performer.taps())
    return explainer
