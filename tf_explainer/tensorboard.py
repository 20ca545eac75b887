"""TensorBoard logs of training, laid out so that one TensorBoard over many runs stays legible.

One TensorBoard root (e.g. runs/demo) usually holds several model directories, each with its logs
in <model_dir>/logs: the performer's and one per explainer (baseline, ablations). Two callbacks:

ModelTensorBoard(log_dir, model_name): a callback writing the epoch scalars tagged
  "<model_name>/epoch_<log>" (train and validation runs as Keras' TensorBoard lays them out), so the performer's
  "performer/epoch_loss" never shares a chart with the explainers' "explainer/epoch_loss"; every
  scalar has a description, and a custom-scalars category named after the model charts them.
ExplainerTensorBoard(log_dir, probe_batch, geometries, ...): on the same log_dir, the run "probe":
  at train begin, the HParams session (named after the model directory, carrying every setting
  of the run) and the explainer's custom-scalars layout;
  per epoch, on a fixed probe batch, the measurements of docs/method.md as "probe/<name>" scalars,
  captioned pictures (part-map overlays, top patches per filter, Grad-CAMs) and one histogram of
  the part filters' peak values.
Every tag carries a description (the (i) of its TensorBoard card).

The HParams session is the probe run itself because TensorBoard looks a session's metrics up in
the run <session>/<group>, which never matches when the session is the logdir root ("."). No
experiment config is written: TensorBoard then derives each setting's type and domain from the
values of all sessions under its root (strings and booleans: the values seen; numbers: their
range), where a config written by one run would only know that run's values.
"""

import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.hparams import api as hp

from tf_explainer import evaluation, visualize

PERFORMER = "performer"  # model_name of the performer's ModelTensorBoard
EXPLAINER = "explainer"  # model_name of an explainer's; the explainer layout charts these tags
PROBE_RUN = "probe"
LOSS_TERMS = ("loss", "reconstruction", "classification", "log_p", "filter_interp_1",
              "filter_interp_2")
# Probe-batch measures also added to the epoch logs (and so to the training history).
PROBE_LOGS = ("part_coverage", "duplicate_filters", "instability_explainer")
# Explainer attributes logged as HParams settings (the settings dict given to the callback adds
# to and overrides them).
EXPLAINER_SETTINGS = ("pool_position", "template_form", "centre", "filter_loss",
                      "filter_loss_weight", "eta", "fusion_logit_scale", "objective",
                      "category_source", "norm_positives_only", "use_masks", "learn_sigma")
# The part filters shown over each image in images/part_overlay.
OVERLAY_FILTERS = 3
# visualize.image_summaries key -> image tag.
IMAGE_TAGS = {"part_overlay": "images/part_overlay_strongest_filters",
              "top_patches": "images/top_patches_per_filter",
              "grad_cam": "images/grad_cam_explainer_vs_performer"}
PEAKS_TAG = "part_maps/filter_peaks"
# What each image tag shows ({shown}: filters per overlay, {rows}: filters with top patches).
_IMAGE_MEANINGS = {
    "part_overlay": "Each probe image with its {shown} part filters (conv-interp-2) of highest "
                    "peak over it, each in its colour; the caption names them, strongest first, "
                    "in their colours: filter index, the category it is assigned to on the probe "
                    "batch and the landmark part it hits most (when it hits one).",
    "top_patches": "One row per part filter (the first {rows}; the label names the filter, its "
                   "category and landmark part): the patches of the probe images where it peaks "
                   "highest, strongest first, the box marking the peak cell.",
    "grad_cam": "Grad-CAM of the performer's predicted class, per probe image: left through the "
                "explainer's part filters (conv-interp-2), right through the performer's top "
                "conv layer.",
}

_EPOCH_LOG_MEANINGS = {
    "loss": "total loss: the objective, -eta log p and lambda * kappa_t times the filter "
            "losses",
    "reconstruction": "the reconstruction loss of the performer's upper layers (the objective)",
    "classification": "the classification loss (the objective of the Explainer+cls baseline)",
    "log_p": "-eta log p, the term that pulls the reconstruction toward the interpretable "
             "track",
    "filter_interp_1": "filter loss of conv-interp-1 (unscaled: the objective adds it times "
                       "lambda * kappa_t)",
    "filter_interp_2": "filter loss of conv-interp-2, the part filters (unscaled: the objective "
                       "adds it times lambda * kappa_t)",
    "p": "p, the share of the reconstruction that goes through the interpretable track",
    "performer_accuracy": "the performer's accuracy",
    "reconstructed_accuracy": "the accuracy of the performer's head on the reconstruction",
    "accuracy": "the accuracy",
    "learning_rate": "the optimizer's learning rate at the end of the epoch",
}
_PROBE_MEANINGS = {
    "p": "p, the share of the reconstruction that goes through the interpretable track",
    "performer_accuracy": "the performer's accuracy",
    "reconstructed_accuracy": "the accuracy of the performer's head on the reconstruction",
    "performer_error": "the performer's error rate",
    "reconstructed_error": "the error rate of the performer's head on the reconstruction",
    "reconstructed_error_increase": "reconstructed error minus the performer's error",
    "instability_performer_target": "location instability (lower is better) of the "
                                    "performer's target layer",
    "instability_performer_top": "location instability (lower is better) of the performer's "
                                 "top conv layer",
    "instability_explainer": "location instability (lower is better) of the part filters "
                             "(conv-interp-2)",
    "instability_fixed_point": "fixed-point floor: the location instability of a filter that "
                               "always peaks at the best fixed pixel",
    "part_coverage": "part coverage: the fraction of landmarks some part filter detects",
    "part_coverage_top": "part coverage of the performer's top conv filters",
    "duplicate_filters": "duplicates: the fraction of part filters that have a twin or are dead",
    "duplicate_filters_top": "duplicates among the performer's top conv filters",
}
_METHOD = "See docs/method.md."

_FONT_SIZE = 10
_LINE_HEIGHT = 13  # pixels per caption line at _FONT_SIZE
_MIN_CAPTIONED_WIDTH = 192  # smaller pictures are enlarged so that a caption line fits
_TEXT_COLOUR = (255, 255, 255)


def _chart(title, *tag_patterns):
    return layout_pb2.Chart(title=title,
                            multiline=layout_pb2.MultilineChartContent(tag=list(tag_patterns)))


def _epoch_pattern(model_name, name_pattern):
    return f"^{model_name}/epoch_{name_pattern}$"


def scalars_layout():
    """The explainer's custom-scalars layout: its epoch scalars (train and validation runs) beside
    the probe scalars: losses, p, instabilities, balance, accuracy."""
    probe = f"^{PROBE_RUN}/"
    epoch = functools.partial(_epoch_pattern, EXPLAINER)
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="Losses",
                            chart=[_chart(term, epoch(term)) for term in LOSS_TERMS]),
        layout_pb2.Category(title="Fusion", chart=[_chart("p", epoch("p"), f"{probe}p$")]),
        layout_pb2.Category(title="Interpretability", chart=[
            _chart("location instability", f"{probe}instability_"),
            _chart("part coverage", f"{probe}part_coverage"),
            _chart("duplicate filters", f"{probe}duplicate_filters")]),
        layout_pb2.Category(title="Balance", chart=[
            _chart("gradient-norm ratio to the reconstruction's", epoch("grad_ratio_.*"))]),
        layout_pb2.Category(title="Classification", chart=[
            _chart("accuracy", epoch("(performer|reconstructed)_accuracy"),
                   f"{probe}(performer|reconstructed)_accuracy$"),
            _chart("reconstructed error increase", f"{probe}reconstructed_error_increase$")]),
    ])


def model_scalars_layout(model_name, log_names):
    """One custom-scalars category named after the model: a chart per epoch log (its train and
    validation runs on one chart)."""
    return layout_pb2.Layout(category=[layout_pb2.Category(
        title=model_name,
        chart=[_chart(name, _epoch_pattern(model_name, name)) for name in log_names])])


def _write_layout(layout):
    tf.summary.experimental.write_raw_pb(custom_scalar_summary.pb(layout).SerializeToString(),
                                         step=0)


def epoch_log_description(model_name, name, over):
    """What the epoch scalar `name` of `model_name` measures, and `over` which data."""
    if name.startswith("grad_ratio_"):
        meaning = (f"gradient-norm ratio {name[len('grad_ratio_'):]}: ||gradient of the term|| / "
                   "||gradient of the objective|| on that layer (balance of the loss terms)")
    elif name.startswith("probe_"):
        meaning = _PROBE_MEANINGS.get(name[len("probe_"):], name) + " on the probe batch"
    else:
        meaning = _EPOCH_LOG_MEANINGS.get(name, f"the epoch log '{name}'")
    return f"The {model_name}'s {meaning}, per epoch ({over}). {_METHOD}"


class ModelTensorBoard(keras.callbacks.Callback):
    """Epoch scalars of one model, tagged "<model_name>/epoch_<log>", in TensorBoard.

    Training logs go to the run log_dir/train, validation logs (without "val_") to
    log_dir/validation, as Keras' own TensorBoard callback lays them out, plus the optimizer's
    learning rate. Each scalar has a description; at the first epoch's end a custom-scalars
    category named after the model charts every epoch log. Written with tf.summary alone (no
    private attributes of Keras' TensorBoard callback), so it works the same under model.fit and
    training.custom_fit.
    """

    def __init__(self, log_dir, model_name):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.model_name = model_name
        self._writers = {}
        self._layout_written = False

    def _writer(self, run):
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def _learning_rate(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return {}
        return {"learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train_logs = {name: value for name, value in logs.items() if not name.startswith("val_")}
        if train_logs:
            train_logs.update(self._learning_rate())
        validation_logs = {name[len("val_"):]: value for name, value in logs.items()
                           if name.startswith("val_")}
        runs = (("train", train_logs, "run 'train': the training data"),
                ("validation", validation_logs, "run 'validation': the validation data"))
        for run, run_logs, over in runs:
            if not run_logs:
                continue
            with self._writer(run).as_default():
                for name, value in run_logs.items():
                    tf.summary.scalar(
                        f"{self.model_name}/epoch_{name}", value, step=epoch,
                        description=epoch_log_description(self.model_name, name, over))
        if train_logs and not self._layout_written:
            with self._writer("train").as_default():
                _write_layout(model_scalars_layout(self.model_name, list(train_logs)))
            self._layout_written = True
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _default_run_name(log_dir):
    """The model directory's name for training.log_dir's <model_dir>/logs, else log_dir's."""
    log_dir = os.path.abspath(log_dir)
    if os.path.basename(log_dir) == "logs":
        log_dir = os.path.dirname(log_dir)
    return os.path.basename(log_dir)


def hparam_value(value):
    """`value` as the HParams dashboard stores it: a bool, number or string (None: not set)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@functools.cache
def _font():
    return ImageFont.load_default(_FONT_SIZE)


def _enlarged(image, factor):
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def captioned(image, lines):
    """uint8 [H, W, 3] with caption `lines` ((text, rgb) each) in a black band below it; images
    narrower than _MIN_CAPTIONED_WIDTH are enlarged (nearest) by a whole factor first."""
    image = _enlarged(image, math.ceil(_MIN_CAPTIONED_WIDTH / image.shape[1]))
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + _LINE_HEIGHT * len(lines)))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (text, colour) in enumerate(lines):
        draw.text((2, image.shape[0] + i * _LINE_HEIGHT), text, fill=colour, font=_font())
    return np.asarray(canvas)


def row_labelled(grid, row_height, labels):
    """A grid uint8 [rows * row_height, W, 3] with labels[r] left of row r (rows are enlarged
    so that a label fits their height)."""
    factor = math.ceil(_LINE_HEIGHT / row_height)
    grid, row_height = _enlarged(grid, factor), row_height * factor
    width = 4 + max(int(np.ceil(_font().getlength(label))) for label in labels)
    canvas = Image.new("RGB", (width + grid.shape[1], grid.shape[0]))
    canvas.paste(Image.fromarray(grid), (width, 0))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        draw.text((2, r * row_height + (row_height - _LINE_HEIGHT) // 2), label,
                  fill=_TEXT_COLOUR, font=_font())
    return np.asarray(canvas)


def _overlay_legend(peaks, filter_names):
    """Caption lines naming the filters visualize.overlay_part_maps shows over an image with
    these filter `peaks`, strongest first, each in its overlay colour."""
    palette = visualize.PALETTE
    shown = visualize.strongest_first(peaks, top_k=OVERLAY_FILTERS)
    return [(filter_names[f], tuple(int(c) for c in palette[k % len(palette)]))
            for k, f in enumerate(shown)]


class ExplainerTensorBoard(keras.callbacks.Callback):
    """Writes probe-batch metrics, captioned pictures and the hparams/custom-scalars dashboards.

    Args:
      log_dir: the log_dir of the explainer's ModelTensorBoard.
      probe_batch: one batch {"image", "raw", "label", "landmarks"} (data.pipeline.batches()).
      geometries: evaluation.performer_geometries(performer).
      hparams: {setting: value} of the run, all logged as HParams settings (bools, numbers and
        strings as they are, None left out, anything else as its str), over the explainer's own
        EXPLAINER_SETTINGS, the initial learning_rate and the fit's epochs.
      run_name: the HParams trial's name; default: the model directory's name (log_dir's parent
        when log_dir is training.log_dir(model_dir)).
      class_names, landmark_names: names in the image captions (default: indices).
      every_n_epochs: write the probe summaries after every n-th epoch.
      max_images: images shown per image tag. max_filters: filters in the top patches.
    """

    def __init__(self, log_dir, probe_batch, geometries, hparams=None, run_name=None,
                 class_names=None, landmark_names=None, every_n_epochs=1, max_images=8,
                 max_filters=16):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.probe_batch = {k: tf.convert_to_tensor(v) for k, v in probe_batch.items()}
        self.geometries = geometries
        self.hparams = dict(hparams or {})
        self.run_name = run_name or _default_run_name(self.log_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.every_n_epochs = int(every_n_epochs)
        self.max_images = int(max_images)
        self.max_filters = int(max_filters)
        self._writer = None

    def hparam_values(self):
        """{setting: value} of the HParams session: the explainer's, then the given ones."""
        model = self.model
        values = {name: getattr(model, name) for name in EXPLAINER_SETTINGS if hasattr(model, name)}
        if getattr(model, "optimizer", None) is not None:
            values["learning_rate"] = float(np.asarray(model.optimizer.learning_rate))
        if self.params and "epochs" in self.params:
            values["epochs"] = self.params["epochs"]
        values.update(self.hparams)
        values = {name: hparam_value(value) for name, value in values.items()}
        return {name: value for name, value in values.items() if value is not None}

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, PROBE_RUN))
        with self._writer.as_default():
            hp.hparams(self.hparam_values(), trial_id=self.run_name)
            _write_layout(scalars_layout())
        self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        result = self.write_probe(epoch)
        if logs is not None:  # into the history, so a run's record shows when filters collapse
            logs.update({f"probe_{key}": result[key] for key in PROBE_LOGS if key in result})

    def _class_name(self, index):
        return self.class_names[int(index)] if self.class_names else f"class {int(index)}"

    def _image_description(self, key, **details):
        """What the image tag of `key` shows; for per-image pictures also which probe image
        (and class) each of its samples is."""
        what = _IMAGE_MEANINGS[key].format(**details)
        if key == "top_patches":
            return f"{what} {_METHOD}"
        labels = np.asarray(self.probe_batch["label"]).reshape(-1)[:self.max_images]
        samples = ", ".join(f"{i}: probe image {i} ({self._class_name(c)})"
                            for i, c in enumerate(labels))
        return f"{what} Samples (the probe batch, fixed for the run): {samples}. {_METHOD}"

    def _filter_name(self, row):
        """"filter 5: bird, head" from a row of the evaluation's per-filter table."""
        category = row["category"]
        if not isinstance(category, str):  # an index when no class names were given
            category = self._class_name(category)
        part = "" if row["part"] == "none" else f", {row['part']}"
        return f"filter {row['filter']}: {category}{part}"

    def _captioned_images(self, result, predicted, peaks):
        """visualize.image_summaries of the probe batch with captions: per image its index, class
        and predicted class; on overlays each shown filter (in its colour), its category and part;
        beside each row of top patches its filter. result: the probe batch's evaluation;
        predicted: the performer's class per image; peaks: [images, filters] part-map peaks."""
        images = visualize.image_summaries(self.model, self.probe_batch,
                                           self.geometries["part_maps"], top_k=OVERLAY_FILTERS,
                                           max_filters=self.max_filters)
        filter_names = [self._filter_name(row) for row in result["filters"]["explainer"]]
        labels = np.asarray(self.probe_batch["label"]).reshape(-1)
        titles = [(f"probe image {i}: {self._class_name(label)}, predicted "
                   f"{self._class_name(guess)}", _TEXT_COLOUR)
                  for i, (label, guess) in enumerate(zip(labels, predicted))]
        shown = slice(0, self.max_images)
        overlays = [captioned(image, [title] + _overlay_legend(image_peaks, filter_names))
                    for image, title, image_peaks in zip(images["part_overlay"][shown], titles,
                                                         peaks[shown])]
        rows = min(self.max_filters, peaks.shape[-1])
        patches = row_labelled(images["top_patches"][0], images["top_patches"].shape[1] // rows,
                               filter_names[:rows])
        return {"part_overlay": np.stack(overlays), "top_patches": patches[None],
                "grad_cam": np.stack([captioned(image, [title]) for image, title
                                      in zip(images["grad_cam"][shown], titles)])}

    def write_probe(self, step):
        """The probe batch's metrics, captioned pictures and filter-peak histogram at `step`;
        returns the probe batch's evaluation."""
        collected = evaluation.collect(self.model, tf.data.Dataset.from_tensors(self.probe_batch))
        result = evaluation.measure(self.model, collected, self.geometries,
                                    landmark_names=self.landmark_names,
                                    class_names=self.class_names)
        peaks = collected.values["part_maps"]  # [images, filters]
        images = self._captioned_images(result, collected.performer_predictions, peaks)
        with self._writer.as_default(step=step):
            for name, value in result.items():
                if isinstance(value, float):  # numbers only: the per-filter tables are not
                    tf.summary.scalar(f"{PROBE_RUN}/{name}", value,
                                      description=self._probe_scalar_description(name))
            for key, pictures in images.items():
                tf.summary.image(IMAGE_TAGS[key], pictures, max_outputs=self.max_images,
                                 description=self._image_description(
                                     key, shown=OVERLAY_FILTERS,
                                     rows=min(self.max_filters, peaks.shape[-1])))
            tf.summary.histogram(PEAKS_TAG, peaks, description=(
                "Peak value (maximum over the map) of every part filter (conv-interp-2) on every "
                "probe image, all filters in one histogram: filters that never fire pile up at "
                "zero, firing ones spread to the right. " + _METHOD))
        self._writer.flush()
        return result

    @staticmethod
    def _probe_scalar_description(name):
        meaning = _PROBE_MEANINGS.get(name, f"the measurement '{name}'")
        return f"The explainer's {meaning}, on the fixed probe batch after the epoch. {_METHOD}"

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
