"""One worker of tests/test_strategy.py's multi-worker run: trains the tiny explainer with
MultiWorkerMirroredStrategy (cluster and task from TF_CONFIG) through training.train_explainer.

  python -m tests.multi_worker_job INITIAL_WEIGHTS.npz MODEL_DIR OUTPUT EPOCHS

Starts from the given weights (so every worker and the test's single-device reference start
equal), writes the trained weights to OUTPUT.npz and, from a callback (callbacks run on the chief
only), the listing of MODEL_DIR/backup after each epoch to OUTPUT.backups.json.
"""

import json
import os
import sys

import keras
import numpy as np

from tests.tiny import image_batches, tiny_performer
from tf_explainer import training
from tf_explainer.build import build_explainer
from tf_explainer.strategy import make_strategy

OPTIONS = dict(eta=1.0, filter_loss_weight=0.5)
BATCHES = dict(num_batches=3, batch_size=8)
LEARNING_RATE = 0.01


class BackupListing(keras.callbacks.Callback):
    """Records which checkpoint files the backup folder holds at each epoch's end."""

    def __init__(self, backup, path):
        super().__init__()
        self.backup, self.path, self.listings = backup, path, []

    def on_epoch_end(self, epoch, logs=None):
        self.listings.append(sorted(os.listdir(self.backup)))
        with open(self.path, "w") as f:
            json.dump(self.listings, f)


def main(initial_path, model_dir, output, epochs):
    strategy = make_strategy("multi_worker")  # before any other TensorFlow work in the process
    initial = np.load(initial_path)
    with strategy.scope():
        explainer = build_explainer(tiny_performer(), **OPTIONS)
        explainer.set_weights([initial[name] for name in initial.files])
        optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)
    listing = BackupListing(os.path.join(model_dir, training.BACKUP_DIR), output + ".backups.json")
    training.train_explainer(explainer, image_batches(**BATCHES), image_batches(1, batch_size=8),
                             model_dir, int(epochs), optimizer, callbacks=[listing])
    np.savez(output + ".npz", *explainer.get_weights())


if __name__ == "__main__":
    main(*sys.argv[1:])
