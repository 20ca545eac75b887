"""One worker of the multi-worker tests (tests/test_strategy.py, tests/test_multi_worker_kill.py):
trains the tiny explainer with MultiWorkerMirroredStrategy (cluster and task from TF_CONFIG)
through training.train_explainer.

  python -m tests.multi_worker_job INITIAL_WEIGHTS.npz MODEL_DIR OUTPUT EPOCHS [STALL_MARKER]

Starts from the given weights (so every worker and the test's single-device reference start
equal), writes the trained weights to OUTPUT.npz and, from callbacks (callbacks run on the chief
only), the listing of MODEL_DIR/backup after each epoch to OUTPUT.backups.json and where training
started (first epoch run, optimizer steps already taken) to OUTPUT.start.json, so a test can tell
a resumed run from a fresh one. Logs at INFO, so the loop's "Resuming from ..." line shows.

With STALL_MARKER, the chief's input pipeline stalls once in the middle of the second epoch (see
StallOnce), so that a test can SIGKILL a worker at a known point of training. The stall only
happens while STALL_MARKER does not exist, so the same command, rerun after the kill, trains
through.
"""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tests.tiny import image_batches, tiny_performer
from tf_explainer import training
from tf_explainer.build import build_explainer
from tf_explainer.strategy import make_strategy

OPTIONS = dict(eta=1.0, filter_loss_weight=0.5)
BATCHES = dict(num_batches=3, batch_size=8)
LEARNING_RATE = 0.01
STALL_SECONDS = 120  # how long a stalled chief waits to be killed before it goes on


def worker_environment(workers, index, tmp_dir):
    """The environment of worker `index` of a local cluster: its TF_CONFIG over `workers`
    ("host:port" strings), the checkout on PYTHONPATH, CPU only, and its own TMPDIR (so a test can
    check that the worker's temporary saves were cleaned up)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_dir),
            "TF_CONFIG": json.dumps({"cluster": {"worker": list(workers)},
                                     "task": {"type": "worker", "index": index}})}


def _write_json(path, value):
    """Writes atomically, so a test polling for `path` never reads half a file."""
    with open(path + ".partial", "w") as f:
        json.dump(value, f)
    os.replace(path + ".partial", path)


class BackupListing(keras.callbacks.Callback):
    """Records which checkpoint files the backup folder holds at each epoch's end."""

    def __init__(self, backup, path):
        super().__init__()
        self.backup, self.path, self.listings = backup, path, []

    def on_epoch_end(self, epoch, logs=None):
        self.listings.append(sorted(os.listdir(self.backup)))
        _write_json(self.path, self.listings)


class TrainingStart(keras.callbacks.Callback):
    """Records the first epoch this run trains and the optimizer steps taken before it: a resumed
    run starts after its checkpoint's epoch with that epoch's steps already counted."""

    def __init__(self, path):
        super().__init__()
        self.path, self.recorded = path, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self.recorded:
            self.recorded = True
            _write_json(self.path, {"first_epoch": epoch,
                                    "steps": int(self.model.optimizer.iterations.numpy())})


class StallOnce(keras.callbacks.Callback):
    """Stalls the chief's input pipeline once, before it delivers batch `batch` (0-based) of epoch
    `epoch` (0-based): it waits (at most `seconds`) for the steps on the batches already delivered
    to finish, writes `marker` ({"epoch", "batch", "steps": optimizer steps taken}) and waits up
    to `seconds` more. Training is then mid-epoch: `batch` steps of the epoch have updated the
    weights in memory, none of it is checkpointed, and the other worker waits for the chief in
    the next step.

    Callbacks run on the chief only, so on the other workers the epoch stays unknown and their
    pipelines never stall. Nothing stalls while `marker` exists."""

    def __init__(self, marker, epoch=1, batch=2, seconds=STALL_SECONDS):
        super().__init__()
        self.marker, self.epoch, self.batch, self.seconds = marker, epoch, batch, seconds
        self.current, self.delivered, self.epoch_start_steps = None, 0, 0

    def _steps(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.current, self.delivered, self.epoch_start_steps = epoch, 0, self._steps()

    def _before_batch(self):
        if self.current == self.epoch and not os.path.exists(self.marker):
            if self.delivered == self.batch:
                deadline = time.monotonic() + self.seconds
                steps_done = self.epoch_start_steps + self.batch
                while self._steps() < steps_done and time.monotonic() < deadline:
                    time.sleep(0.05)
                _write_json(self.marker, {"epoch": self.epoch, "batch": self.batch,
                                          "steps": self._steps()})
                deadline = time.monotonic() + self.seconds
                while time.monotonic() < deadline:
                    time.sleep(0.1)
            self.delivered += 1
        return np.int32(0)

    def stalling(self, dataset):
        """`dataset` with this stall point before each batch."""
        def stall(batch):
            done = tf.py_function(self._before_batch, [], tf.int32)
            with tf.control_dependencies([done]):
                return tf.nest.map_structure(tf.identity, batch)
        return dataset.map(stall)


def main(initial_path, model_dir, output, epochs, stall_marker=None):
    strategy = make_strategy("multi_worker")  # before any other TensorFlow work in the process
    logging.set_verbosity(logging.INFO)
    initial = np.load(initial_path)
    with strategy.scope():
        explainer = build_explainer(tiny_performer(), **OPTIONS)
        explainer.set_weights([initial[name] for name in initial.files])
        optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)
    backup = os.path.join(model_dir, training.BACKUP_DIR)
    callbacks = [BackupListing(backup, output + ".backups.json"),
                 TrainingStart(output + ".start.json")]
    train = image_batches(**BATCHES)
    if stall_marker:
        callbacks.append(StallOnce(stall_marker))
        train = callbacks[-1].stalling(train)
    training.train_explainer(explainer, train, image_batches(1, batch_size=8), model_dir,
                             int(epochs), optimizer, callbacks=callbacks)
    np.savez(output + ".npz", *explainer.get_weights())


if __name__ == "__main__":
    main(*sys.argv[1:])
