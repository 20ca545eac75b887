"""SavedModel export of a performer with its explainer, for TensorFlow Serving (SPEC 6.3).

The archive serves the performer's classification next to the explainer's part activations, with
resizing and preprocessing inside the graph, so clients send plain uint8 pixels or encoded files:

  serving_default  image uint8 [B, H, W, 3]  -> probabilities, classes, part_maps, part_peaks,
                                                part_scores, part_contributions, p
  classify         image uint8 [B, H, W, 3]  -> probabilities, classes (the performer alone)
  image_bytes      image_bytes string [B]    -> as serving_default, from JPEG/PNG files

Every output has the batch dimension first (TF Serving's batching needs it; `p` is repeated per
image). `part_peaks` are (y, x) in each input image's own pixels. Versions are integer folders
`<base>/<model_name>/<version>/`, written to a hidden temporary folder and renamed, so a server
polling the base path never loads half a model.
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tf_explainer.evaluation import explain_with_contributions, performer_geometries

SIGNATURES = ("serving_default", "classify", "image_bytes")
EXPLANATION_OUTPUTS = ("probabilities", "classes", "part_maps", "part_peaks", "part_scores",
                       "part_contributions", "p")
CLASS_NAMES_ASSET = "class_names.txt"
FILTERS_ASSET = "part_filters.json"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PART_LAYER = "conv_interp_2"


def resize(images, input_size):
    """float32 [B, H, W, 3] pixels -> the performer's input size, as the training pipeline does
    (antialiased triangle filter, rounded to whole pixel values; see data.pipeline.crop_resize)."""
    resized = tf.image.resize(images, input_size, method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def peak_positions(part_maps, geometry, input_size, image_sizes):
    """(y, x) pixels [B, F, 2] of each filter's peak cell, in each original image's pixels.

    Cells map to performer-input pixels by the receptive field (offset + cell * stride), then
    to the original image by the resize's pixel-centre scaling: u = (v + 0.5) * H / h - 0.5.
    """
    shape = tf.shape(part_maps)
    width = shape[2]
    flat = tf.reshape(part_maps, [shape[0], shape[1] * width, shape[3]])
    index = tf.argmax(flat, axis=1, output_type=tf.int32)  # [B, F], first max in row-major order
    cells = tf.cast(tf.stack([index // width, index % width], axis=-1), tf.float32)
    pixels = geometry.offset + cells * geometry.stride
    scale = tf.cast(image_sizes, tf.float32) / tf.constant(input_size, tf.float32)  # [B, 2]
    return (pixels + 0.5) * scale[:, None, :] - 0.5


class ExplanationGraph:
    """The traced computations behind the signatures, over one performer and its explainer."""

    def __init__(self, explainer, performer):
        self.explainer = explainer
        self.performer = performer
        self.taps = explainer.performer_taps or performer.taps()
        self.input_size = tuple(int(d) for d in performer.input_size)
        self.geometry = performer_geometries(performer)["part_maps"]

    def _probabilities(self, scores):
        scores = tf.cast(scores, tf.float32)
        probabilities = tf.nn.softmax(scores) if self.performer.scores_are_logits else scores
        return {"probabilities": probabilities,
                "classes": tf.argmax(scores, axis=-1, output_type=tf.int64)}

    def _model_input(self, images):
        return self.performer.preprocess(resize(tf.cast(images, tf.float32), self.input_size))

    def explain_resized(self, resized, image_sizes):
        """Outputs of serving_default from images already at the input size ([B, 2] original
        sizes for the peak positions)."""
        features = self.taps(self.performer.preprocess(resized), training=False)
        result = self._probabilities(features["scores"])
        outputs, contributions = explain_with_contributions(
            self.explainer, features["target"], tf.cast(result["classes"], tf.int32))
        part_maps = tf.cast(outputs["part_maps"], tf.float32)
        batch = tf.shape(part_maps)[0]
        result.update({
            "part_maps": part_maps,
            "part_peaks": peak_positions(part_maps, self.geometry, self.input_size, image_sizes),
            "part_scores": tf.reduce_max(part_maps, axis=[1, 2]),
            "part_contributions": tf.cast(contributions, tf.float32),
            "p": tf.fill([batch], tf.cast(outputs["p"], tf.float32))})
        return result

    def explain(self, image):
        """serving_default: uint8 [B, H, W, 3] -> the explanation outputs."""
        shape = tf.shape(image)
        sizes = tf.tile(shape[None, 1:3], [shape[0], 1])
        return self.explain_resized(resize(tf.cast(image, tf.float32), self.input_size), sizes)

    def classify(self, image):
        """classify: the performer alone on uint8 [B, H, W, 3]."""
        return self._probabilities(self.performer.model(self._model_input(image), training=False))

    def explain_bytes(self, image_bytes):
        """image_bytes: encoded JPEG/PNG strings [B], each decoded and resized on its own."""

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return (resize(tf.cast(image, tf.float32)[None], self.input_size)[0],
                    tf.shape(image)[:2])

        resized, sizes = tf.map_fn(
            decode, image_bytes,
            fn_output_signature=(tf.TensorSpec(self.input_size + (3,), tf.float32),
                                 tf.TensorSpec([2], tf.int32)))
        return self.explain_resized(resized, sizes)


def filter_metadata(explainer, performer) -> dict:
    """What a client needs to read the part outputs: each filter's assigned category and where
    its map sits in the performer's input."""
    categories = explainer.filter_categories()[1].numpy()
    geometry = performer_geometries(performer)["part_maps"]
    class_names = list(performer.class_names)
    return {
        "layer": PART_LAYER,
        "map_shape": [int(d) for d in explainer.target_shape[:2]] + [explainer.part_filters],
        "input_size": [int(d) for d in performer.input_size],
        "receptive_field": {"stride": geometry.stride, "offset": geometry.offset},
        "p": float(explainer.fusion.p()),
        "filters": [{"filter": i, "category": class_names[int(c)], "category_index": int(c),
                     "layer": PART_LAYER} for i, c in enumerate(categories)],
    }


def next_version(model_dir) -> int:
    """1 + the highest integer version folder in `model_dir` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def warmup_requests(model_name, input_size, batch_size=1):
    """PredictionLog records TF Serving replays at load (one request per signature)."""
    image = np.full((batch_size,) + tuple(input_size) + (3,), 128, np.uint8)
    encoded = tf.io.encode_png(image[0]).numpy()
    inputs = {"serving_default": {"image": image}, "classify": {"image": image},
              "image_bytes": {"image_bytes": np.array([encoded] * batch_size, dtype=object)}}
    logs = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for key, value in tensors.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def export_explainer(explainer, performer, base_dir, model_name, version=None,
                     warmup_batch_size=1, overwrite=False) -> str:
    """Writes `<base_dir>/<model_name>/<version>/` and returns it.

    version: an integer, or None for the next free one. An existing version is an error unless
    `overwrite`. The folder is complete (variables, assets, warmup requests) before it appears.
    """
    model_dir = os.path.join(base_dir, model_name)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"Versions are positive integers, got {version}.")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists; pass another version or overwrite=True.")
    staging = os.path.join(model_dir, f".{version}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(model_dir, exist_ok=True)

    graph = ExplanationGraph(explainer, performer)
    image = tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")
    archive = keras.export.ExportArchive()
    archive.track(explainer)
    archive.track(graph.taps)
    archive.add_endpoint("serving_default", graph.explain, input_signature=[image])
    archive.add_endpoint("classify", graph.classify, input_signature=[image])
    archive.add_endpoint("image_bytes", graph.explain_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    try:
        archive.write_out(staging, verbose=False)
        assets = os.path.join(staging, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, CLASS_NAMES_ASSET), "w") as f:
            f.write("\n".join(performer.class_names) + "\n")
        with open(os.path.join(assets, FILTERS_ASSET), "w") as f:
            json.dump(filter_metadata(explainer, performer), f, indent=2)
        os.makedirs(os.path.join(staging, "assets.extra"))
        with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
            for log in warmup_requests(model_name, performer.input_size, warmup_batch_size):
                writer.write(log.SerializeToString())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("Exported %s (signatures: %s)", final, ", ".join(SIGNATURES))
    return final


def read_class_names(export_dir) -> list:
    """Class names stored with an exported model."""
    with open(os.path.join(export_dir, "assets", CLASS_NAMES_ASSET)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_filter_metadata(export_dir) -> dict:
    """Part-filter metadata stored with an exported model (see filter_metadata)."""
    with open(os.path.join(export_dir, "assets", FILTERS_ASSET)) as f:
        return json.load(f)
