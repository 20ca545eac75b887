"""TensorBoard summaries of what the explainer learns, beside keras.callbacks.TensorBoard's losses.

keras.callbacks.TensorBoard(log_dir) writes the fit logs ("epoch_loss", ...) to log_dir/train and
log_dir/validation. ExplainerTensorBoard(log_dir, ...) on the same log_dir writes to log_dir/probe:
  at train begin, the hparams experiment and session, and a custom-scalars layout grouping the fit
  logs with the probe scalars;
  per epoch, on a fixed probe batch, the SPEC 5 metrics as "probe/<name>" scalars, part-map
  overlays, top patches and Grad-CAMs as images, and part-map histograms.
The hparams session is the probe run itself because TensorBoard looks a session's metrics up in
the run <session>/<group>, which never matches when the session is the logdir root (".").
"""

import os

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.hparams import api as hp

from tf_explainer import evaluation, visualize

PROBE_RUN = "probe"
LOSS_TERMS = ("loss", "reconstruction", "log_p", "filter_interp_1", "filter_interp_2")
# Probe-batch measures also added to the epoch logs (and so to the training history).
PROBE_LOGS = ("part_coverage", "duplicate_filters", "instability_explainer")
# Metrics of the hparams dashboard: probe scalar name -> display name.
HPARAM_METRICS = {"instability_explainer": "instability (explainer)",
                  "instability_performer_top": "instability (performer top conv)",
                  "p": "p",
                  "reconstructed_error_increase": "reconstructed error increase"}


def _chart(title, *tag_patterns):
    return layout_pb2.Chart(title=title,
                            multiline=layout_pb2.MultilineChartContent(tag=list(tag_patterns)))


def scalars_layout():
    """Custom-scalars layout: losses (train and validation runs), p, instabilities, accuracy."""
    probe = f"^{PROBE_RUN}/"
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="Losses",
                            chart=[_chart(term, f"^epoch_{term}$") for term in LOSS_TERMS]),
        layout_pb2.Category(title="Fusion", chart=[_chart("p", "^epoch_p$", f"{probe}p$")]),
        layout_pb2.Category(title="Interpretability", chart=[
            _chart("location instability", f"{probe}instability_"),
            _chart("part coverage", f"{probe}part_coverage"),
            _chart("duplicate filters", f"{probe}duplicate_filters")]),
        layout_pb2.Category(title="Balance", chart=[
            _chart("gradient-norm ratio to the reconstruction's", "^epoch_grad_ratio_")]),
        layout_pb2.Category(title="Classification", chart=[
            _chart("accuracy", "^epoch_(performer|reconstructed)_accuracy$",
                   f"{probe}(performer|reconstructed)_accuracy$"),
            _chart("reconstructed error increase", f"{probe}reconstructed_error_increase$")]),
    ])


class ExplainerTensorBoard(keras.callbacks.Callback):
    """Writes probe-batch metrics, pictures and the hparams/custom-scalars dashboards.

    Args:
      log_dir: the log_dir given to keras.callbacks.TensorBoard.
      probe_batch: one batch {"image", "raw", "label", "landmarks"} (data.pipeline.batches()).
      geometries: evaluation.performer_geometries(performer).
      hparams: {name: bool/int/float/str} added to (or overriding) the explainer's own
        filter_loss_weight (lambda), eta, pool_position and the initial learning_rate.
      every_n_epochs: write the probe summaries after every n-th epoch.
      max_images: images shown per image tag. max_filters: filters in patches and histograms.
    """

    def __init__(self, log_dir, probe_batch, geometries, hparams=None, every_n_epochs=1,
                 max_images=8, max_filters=16):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.probe_batch = {k: tf.convert_to_tensor(v) for k, v in probe_batch.items()}
        self.geometries = geometries
        self.hparams = dict(hparams or {})
        self.every_n_epochs = int(every_n_epochs)
        self.max_images = int(max_images)
        self.max_filters = int(max_filters)
        self._writer = None

    def _hparam_values(self):
        model = self.model
        values = {"filter_loss_weight": model.filter_loss_weight, "eta": model.eta,
                  "pool_position": model.pool_position}
        if getattr(model, "optimizer", None) is not None:
            values["learning_rate"] = float(np.asarray(model.optimizer.learning_rate))
        values.update(self.hparams)
        return values

    def on_train_begin(self, logs=None):
        values = self._hparam_values()
        domains = {"pool_position": hp.Discrete(["A", "B"])}
        metrics = [hp.Metric(f"{PROBE_RUN}/{name}", display_name=display)
                   for name, display in HPARAM_METRICS.items()]
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, PROBE_RUN))
        with self._writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(name, domains.get(name)) for name in values],
                              metrics=metrics)
            hp.hparams(values)
            tf.summary.experimental.write_raw_pb(
                custom_scalar_summary.pb(scalars_layout()).SerializeToString(), step=0)
        self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        result = self.write_probe(epoch)
        if logs is not None:  # into the history, so a run's record shows when filters collapse
            logs.update({f"probe_{key}": result[key] for key in PROBE_LOGS if key in result})

    def write_probe(self, step):
        """The probe batch's metrics, pictures and part-map histograms at `step`; returns the
        probe batch's evaluation."""
        explainer = self.model
        result = evaluation.evaluate(explainer, tf.data.Dataset.from_tensors(self.probe_batch),
                                     self.geometries)
        images = visualize.image_summaries(explainer, self.probe_batch,
                                           self.geometries["part_maps"],
                                           max_filters=self.max_filters)
        target = explainer.features(self.probe_batch)["target"]
        part_maps = explainer(target, training=False)["part_maps"]
        with self._writer.as_default(step=step):
            for name, value in result.items():
                if isinstance(value, float):  # numbers only: the per-filter tables are not
                    tf.summary.scalar(f"{PROBE_RUN}/{name}", value)
            for name, value in images.items():
                tf.summary.image(f"images/{name}", value, max_outputs=self.max_images)
            tf.summary.histogram("activations/part_maps", part_maps)
            for f in range(min(self.max_filters, part_maps.shape[-1])):
                tf.summary.histogram(f"activations/filter_{f}", part_maps[..., f])
        self._writer.flush()
        return result

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
