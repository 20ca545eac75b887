"""SavedModel export of a performer with its explainer, for TensorFlow Serving.

The archive serves the performer's classification next to the explainer's part activations, with
resizing and preprocessing inside the graph, so clients send plain uint8 pixels or encoded files:

  serving_default  image uint8 [B, H, W, 3]  -> probabilities, classes, part_maps, part_peaks,
                                                part_scores, part_contributions, p
  classify         image uint8 [B, H, W, 3]  -> probabilities, classes (the performer alone)
  image_bytes      image_bytes string [B]    -> as serving_default, from JPEG, PNG, BMP or WebP
                                                files

Every output has the batch dimension first (TF Serving's batching needs it; `p` is repeated per
image). `part_peaks` are (y, x) in each input image's own pixels. Versions are integer folders
`<base>/<model_name>/<version>/`, written to a hidden temporary folder and renamed, so a server
polling the base path never loads half a model.

Input limits live in the graph, so TF Serving enforces them too: an image over
`max_image_pixels` (height x width) is refused with INVALID_ARGUMENT, before any decoding for
image_bytes (its size is read from the file's header). An 800 KB PNG can hold 16000 x 16000
pixels: decoding it costs seconds and gigabytes, which a few such requests at once turn into an
outage. GIF, animated WebP and JPEG XL files are refused: their headers do not bound what
decoding allocates (TensorFlow's GIF decoder decodes every frame, each sized by the largest).
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tf_explainer.evaluation import performer_geometries

SIGNATURES = ("serving_default", "classify", "image_bytes")
EXPLANATION_OUTPUTS = ("probabilities", "classes", "part_maps", "part_peaks", "part_scores",
                       "part_contributions", "p")
CLASS_NAMES_ASSET = "class_names.txt"
FILTERS_ASSET = "part_filters.json"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PART_LAYER = "conv_interp_2"
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 25 MP: above any camera photo a user would send
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WebP")  # what image_bytes decodes
_MATMUL_GRADIENT = "TfExplainerMatMulGradient"


@tf.RegisterGradient(_MATMUL_GRADIENT)
def _matmul_gradient(op, grad):
    """TensorFlow's MatMul gradient (real dtypes), with the input gradient dY B^T of the plain
    product computed as (B dY^T)^T. The values are the same, but TF's CPU kernel for a short dY
    (a batch of rows) times a wide transposed B is ~5x slower than for the product without a
    transpose: 0.45 s against 0.09 s of CPU for the [8, 4096] x [4096, 25088] input gradient of
    the VGG-16 explainer's first decoder layer at batch 8, more than its three convolutions."""
    a, b = op.inputs
    transpose_a, transpose_b = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    if not transpose_a and not transpose_b:
        return (tf.transpose(tf.matmul(b, grad, transpose_b=True)),
                tf.matmul(a, grad, transpose_a=True))
    if not transpose_a:  # a b^T
        return tf.matmul(grad, b), tf.matmul(grad, a, transpose_a=True)
    if not transpose_b:  # a^T b
        return tf.matmul(b, grad, transpose_b=True), tf.matmul(a, grad)
    return (tf.matmul(b, grad, transpose_a=True, transpose_b=True),
            tf.matmul(grad, a, transpose_a=True, transpose_b=True))


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
    """The traced computations behind the signatures, over one performer and its explainer.

    max_image_pixels: the most height x width an input image may have (see the module doc)."""

    def __init__(self, explainer, performer, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}.")
        self.explainer = explainer
        self.performer = performer
        self.taps = explainer.performer_taps or performer.taps()
        self.input_size = tuple(int(d) for d in performer.input_size)
        self.geometry = performer_geometries(performer)["part_maps"]
        self.max_image_pixels = int(max_image_pixels)

    def _probabilities(self, scores):
        scores = tf.cast(scores, tf.float32)
        probabilities = tf.nn.softmax(scores) if self.performer.scores_are_logits else scores
        return {"probabilities": probabilities,
                "classes": tf.argmax(scores, axis=-1, output_type=tf.int64)}

    def _model_input(self, images):
        return self.performer.preprocess(resize(tf.cast(images, tf.float32), self.input_size))

    def _checked(self, image):
        """uint8 [B, H, W, 3] `image`, once H x W is known to be within max_image_pixels."""
        size = tf.shape(image, out_type=tf.int64)[1:3]
        with tf.control_dependencies([pixel_limit_check(size, self.max_image_pixels,
                                                        tf.constant("image"))]):
            return tf.identity(image)

    def explain_resized(self, resized, image_sizes):
        """Outputs of serving_default from images already at the input size ([B, 2] original
        sizes for the peak positions)."""
        features = self.taps(self.performer.preprocess(resized), training=False)
        result = self._probabilities(features["scores"])
        outputs, contributions = self._explain_with_contributions(
            features["target"], tf.cast(result["classes"], tf.int32))
        part_maps = tf.cast(outputs["part_maps"], tf.float32)
        batch = tf.shape(part_maps)[0]
        result.update({
            "part_maps": part_maps,
            "part_peaks": peak_positions(part_maps, self.geometry, self.input_size, image_sizes),
            "part_scores": tf.reduce_max(part_maps, axis=[1, 2]),
            "part_contributions": tf.cast(contributions, tf.float32),
            "p": tf.fill([batch], tf.cast(outputs["p"], tf.float32))})
        return result

    def _explain_with_contributions(self, target, class_index):
        """evaluation.explain_with_contributions (the explainer's outputs, and each part's
        gradient x activation for class_index), traced with graph gradients so that the
        decoder's MatMul input gradients take the fast form of _matmul_gradient; a gradient tape
        cannot be pointed at another gradient function. The same values (test_export checks the
        served contributions against evaluation.part_contributions)."""
        graph = tf.compat.v1.get_default_graph()
        with graph.gradient_override_map({"MatMul": _MATMUL_GRADIENT}):
            outputs = self.explainer(target, training=False)
        chosen = tf.gather(outputs["scores"], class_index, axis=1, batch_dims=1)
        (gradient,) = tf.gradients(chosen, [outputs["x_interp"]])
        return outputs, tf.reduce_sum(gradient * outputs["x_interp"], axis=[1, 2])

    def explain(self, image):
        """serving_default: uint8 [B, H, W, 3] -> the explanation outputs."""
        image = self._checked(image)
        shape = tf.shape(image)
        sizes = tf.tile(shape[None, 1:3], [shape[0], 1])
        return self.explain_resized(resize(tf.cast(image, tf.float32), self.input_size), sizes)

    def classify(self, image):
        """classify: the performer alone on uint8 [B, H, W, 3]."""
        return self._probabilities(self.performer.model(self._model_input(self._checked(image)),
                                                        training=False))

    def explain_bytes(self, image_bytes):
        """image_bytes: encoded image files [B], each checked (image_header_check), then decoded
        and resized on its own, one at a time so that a request holds one decoded image."""

        def decode(item):
            data, index = item
            with tf.control_dependencies(image_header_check(data, index, self.max_image_pixels)):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return (resize(tf.cast(image, tf.float32)[None], self.input_size)[0],
                    tf.shape(image)[:2])

        resized, sizes = tf.map_fn(
            decode, (image_bytes, tf.range(tf.shape(image_bytes, out_type=tf.int64)[0])),
            fn_output_signature=(tf.TensorSpec(self.input_size + (3,), tf.float32),
                                 tf.TensorSpec([2], tf.int32)), parallel_iterations=1)
        return self.explain_resized(resized, sizes)


# ---- input limits ----------------------------------------------------------------------------

_HEADER_BYTES = 32  # every size field read below lies in a file's first 32 bytes
# What image_header_check sorts files into: the formats of IMAGE_FORMATS, then refused ones.
_KINDS = 8
_UNKNOWN, _JPEG, _PNG, _BMP, _WEBP, _GIF, _ANIMATED_WEBP, _JPEG_XL = range(_KINDS)
_REFUSALS = {
    _UNKNOWN: "is not an image file that image_bytes decodes",
    _GIF: "is a GIF; GIFs are refused because their header does not bound what decoding "
          "allocates (every frame is decoded, each sized by the largest)",
    _ANIMATED_WEBP: "is an animated WebP; only still WebP files are taken",
    _JPEG_XL: "is a JPEG XL file; it is refused (its size is not checked before decoding)",
}


def _starts_with(header, magic: bytes, offset=0):
    return tf.reduce_all(tf.equal(header[offset:offset + len(magic)],
                                  tf.constant(list(magic), tf.int64)))


def _unsigned(header, offset, count, big_endian=False):
    """The unsigned integer in header[offset:offset + count] (int64)."""
    digits = header[offset:offset + count]
    if big_endian:
        digits = digits[::-1]
    return tf.reduce_sum(tf.bitwise.left_shift(digits, 8 * tf.range(count, dtype=tf.int64)))


def _webp_size(header):
    """(height, width) of a WebP file from its first chunk: lossy VP8, lossless VP8L or the
    extended VP8X canvas (which bounds every frame)."""
    lossy = tf.stack([_unsigned(header, 28, 2), _unsigned(header, 26, 2)]) % 16384
    bits = _unsigned(header, 21, 4)
    lossless = tf.stack([tf.bitwise.right_shift(bits, 14) % 16384, bits % 16384]) + 1
    extended = tf.stack([_unsigned(header, 27, 3), _unsigned(header, 24, 3)]) + 1
    return tf.where(_starts_with(header, b"VP8 ", 12), lossy,
                    tf.where(_starts_with(header, b"VP8L", 12), lossless, extended))


def _bmp_size(header):
    """(height, width) of a BMP file: int32 width and height (negative: rows top-down)."""
    def signed(offset):
        value = _unsigned(header, offset, 4)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))
    return tf.stack([signed(22), signed(18)])


def encoded_image_size(data):
    """(kind, [height, width]) of one encoded image, from its header alone.

    kind is _JPEG, _PNG, _BMP or _WEBP for the formats image_bytes decodes, another constant for
    refused ones (size [0, 0]). The format is told by the same magic bytes that tf.io.decode_image
    uses, so the size checked is the size that decoder sees."""
    header = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, _HEADER_BYTES),
                                                b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    header = tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64)
    webp = _starts_with(header, b"RIFF") & _starts_with(header, b"WEBP", 8)
    animated_webp = webp & _starts_with(header, b"VP8X", 12) & (
        tf.bitwise.bitwise_and(header[20], 2) > 0)
    kinds = [(_JPEG, _starts_with(header, b"\xff\xd8\xff")),
             (_PNG, _starts_with(header, b"\x89PNG\r\n\x1a\n")),
             (_GIF, _starts_with(header, b"GIF8")),
             (_BMP, _starts_with(header, b"BM")),
             (_ANIMATED_WEBP, animated_webp), (_WEBP, webp),
             (_JPEG_XL, _starts_with(header, b"\xff\x0a")
              | _starts_with(header, b"\0\0\0\x0cJXL \r\n\x87\n"))]
    kind = tf.constant(_UNKNOWN, tf.int32)
    for value, matches in reversed(kinds):  # the first match wins
        kind = tf.where(matches, value, kind)
    branches = [lambda: tf.zeros([2], tf.int64)] * _KINDS
    branches[_JPEG] = lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)
    branches[_PNG] = lambda: tf.stack([_unsigned(header, 20, 4, True),
                                       _unsigned(header, 16, 4, True)])
    branches[_BMP] = lambda: _bmp_size(header)
    branches[_WEBP] = lambda: _webp_size(header)
    return kind, tf.switch_case(kind, branches)


def pixel_limit_check(size, max_pixels, what):
    """An assertion that size = [height, width] holds at most max_pixels pixels; its message
    names `what` (a string tensor), the size and the limit."""
    pixels = size[0] * size[1]
    message = tf.strings.join([
        what, " is ", tf.strings.as_string(size[0]), " x ", tf.strings.as_string(size[1]), " = ",
        tf.strings.as_string(pixels), f" pixels, over the limit of {max_pixels} pixels "
        "(max_image_pixels of the export)"])
    return tf.debugging.Assert(pixels <= max_pixels, [message])


def image_header_check(data, index, max_pixels) -> list:
    """Assertions on one encoded image, read from its header before decoding: a format that
    image_bytes takes, and at most max_pixels pixels (INVALID_ARGUMENT otherwise)."""
    kind, size = encoded_image_size(data)
    what = tf.strings.join(["image_bytes[", tf.strings.as_string(index), "]"])
    refusal = tf.gather(tf.constant([_REFUSALS.get(k, "") for k in range(_KINDS)]), kind)
    format_check = tf.debugging.Assert(tf.equal(refusal, ""), [tf.strings.join([
        what, " ", refusal, "; image_bytes takes ", ", ".join(IMAGE_FORMATS), " files"])])
    with tf.control_dependencies([format_check]):
        return [format_check, pixel_limit_check(size, max_pixels, what)]


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
                     warmup_batch_size=1, overwrite=False,
                     max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """Writes `<base_dir>/<model_name>/<version>/` and returns it.

    version: an integer, or None for the next free one. An existing version is an error unless
    `overwrite`. The folder is complete (variables, assets, warmup requests) before it appears.
    max_image_pixels: every signature refuses larger images (recorded in the filter metadata).
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

    graph = ExplanationGraph(explainer, performer, max_image_pixels)
    image = tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")
    archive = keras.export.ExportArchive()
    archive.track(explainer)
    archive.track(graph.taps)
    archive.add_endpoint("serving_default", graph.explain, input_signature=[image])
    archive.add_endpoint("classify", graph.classify, input_signature=[image])
    archive.add_endpoint("image_bytes", graph.explain_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    try:
        # The serving graphs hold their gradient ops already; the gradient function named on
        # their MatMul ops (_matmul_gradient) is not saved: it would never be used, and the saver
        # cannot trace it. tf.saved_model.load then warns of "unsaved custom gradients", which
        # only matters to code that differentiates the loaded signatures.
        archive.write_out(staging, verbose=False,
                          options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        assets = os.path.join(staging, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, CLASS_NAMES_ASSET), "w") as f:
            f.write("\n".join(performer.class_names) + "\n")
        with open(os.path.join(assets, FILTERS_ASSET), "w") as f:
            json.dump({**filter_metadata(explainer, performer),
                       "max_image_pixels": graph.max_image_pixels}, f, indent=2)
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
