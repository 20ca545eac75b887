"""SavedModel export: signatures, values against the Keras objects, versions, assets, warmup,
input limits."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from tf_explainer import evaluation, export
from tf_explainer.build import build_explainer
from tf_explainer.metrics.instability import map_peaks
from tiny import image_batches, tiny_performer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 5000  # above every image these tests send (72 x 72 at most), below 80 x 80


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    performer = tiny_performer(class_names=["background", "bird", "cat"])
    explainer = build_explainer(performer)
    # A few training steps so the filter assignment and p are not their initial values.
    explainer.compile(optimizer="adam")
    explainer.fit(image_batches(num_batches=2).map(lambda b: {**b, "image": b["image"] * 255.0}),
                  epochs=1, verbose=0)
    base = str(tmp_path_factory.mktemp("export"))
    path = export.export_explainer(explainer, performer, base, "explainer",
                                   max_image_pixels=MAX_PIXELS)
    return performer, explainer, base, path


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _keras_outputs(performer, explainer, images):
    """The serving outputs computed directly with the Keras performer and explainer."""
    size = performer.input_size
    model_input = performer.preprocess(export.resize(tf.cast(images, tf.float32), size))
    scores = performer.model(model_input)
    features = explainer.performer_features(model_input)
    outputs = explainer(features["target"])
    return {"probabilities": tf.nn.softmax(scores).numpy(),
            "classes": np.argmax(scores, -1),
            "part_maps": outputs["part_maps"].numpy(),
            "part_scores": np.max(outputs["part_maps"].numpy(), axis=(1, 2)),
            "part_contributions": evaluation.part_contributions(explainer, model_input),
            "p": np.full(len(images), float(explainer.fusion.p()))}


def test_signatures_and_output_shapes(exported):
    _, explainer, _, path = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(export.SIGNATURES)
    default = loaded.signatures["serving_default"]
    assert default.structured_input_signature[1]["image"].dtype == tf.uint8
    assert set(default.structured_outputs) == set(export.EXPLANATION_OUTPUTS)
    assert set(loaded.signatures["classify"].structured_outputs) == {"probabilities", "classes"}
    out = default(image=tf.constant(_images((3, 45, 27, 3))))
    filters = explainer.part_filters
    assert out["part_maps"].shape == (3, 8, 8, filters)
    assert out["part_peaks"].shape == (3, filters, 2) and out["part_scores"].shape == (3, filters)
    assert out["part_contributions"].shape == (3, filters) and out["p"].shape == (3,)
    assert out["classes"].dtype == tf.int64 and out["probabilities"].shape == (3, 3)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (3, 50, 70, 3)])
def test_reloaded_model_matches_keras_objects(exported, shape):
    performer, explainer, _, path = exported
    images = _images(shape)
    served = tf.saved_model.load(path).signatures["serving_default"](image=tf.constant(images))
    expected = _keras_outputs(performer, explainer, images)
    for key, value in expected.items():
        np.testing.assert_allclose(served[key].numpy(), value, atol=1e-5, rtol=1e-5, err_msg=key)
    classify = tf.saved_model.load(path).signatures["classify"](image=tf.constant(images))
    np.testing.assert_allclose(classify["probabilities"], expected["probabilities"], atol=1e-6)


def test_peaks_are_receptive_field_centres_in_input_pixels(exported):
    performer, _, _, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    geometry = evaluation.performer_geometries(performer)["part_maps"]
    images = _images((2, 32, 32, 3), seed=3)
    out = serve(image=tf.constant(images))
    cells, values = map_peaks(out["part_maps"].numpy())
    np.testing.assert_allclose(out["part_peaks"], geometry.cell_to_pixel(cells), atol=1e-5)
    np.testing.assert_allclose(out["part_scores"], values)
    # The same picture at twice the size (nearest-neighbour upscale): peaks scale with it.
    doubled = serve(image=tf.constant(images.repeat(2, axis=1).repeat(2, axis=2)))
    cells_2, _ = map_peaks(doubled["part_maps"].numpy())
    np.testing.assert_allclose(doubled["part_peaks"], (geometry.cell_to_pixel(cells_2) + 0.5) * 2 - 0.5,
                               atol=1e-5)


def test_image_bytes_decodes_png_and_jpeg_of_different_sizes(exported):
    _, _, _, path = exported
    loaded = tf.saved_model.load(path)
    first, second = _images((1, 32, 32, 3))[0], _images((1, 40, 24, 3), seed=1)[0]
    out = loaded.signatures["image_bytes"](image_bytes=tf.constant(
        [tf.io.encode_png(first).numpy(), tf.io.encode_jpeg(second, quality=95).numpy()]))
    direct = loaded.signatures["serving_default"](image=tf.constant(first[None]))
    for key in export.EXPLANATION_OUTPUTS:
        np.testing.assert_allclose(out[key][:1], direct[key], atol=1e-6, err_msg=key)
    assert np.all(out["part_peaks"][1, :, 0] <= 40) and np.all(out["part_peaks"][1, :, 1] <= 24)
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["image_bytes"](image_bytes=tf.constant([b"not an image"]))


def test_saved_model_cli_run_matches_keras_objects(exported, tmp_path):
    performer, explainer, _, path = exported
    images = _images((2, 36, 36, 3), seed=5)
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "run", "--dir", path,
         "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"image={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = _keras_outputs(performer, explainer, images)
    for key, value in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{key}.npy"), value, atol=1e-5,
                                   rtol=1e-5, err_msg=key)


def test_versions_are_integer_folders_written_whole(exported):
    performer, explainer, base, first = exported
    model_dir = os.path.join(base, "explainer")
    assert os.path.basename(first) == "1"
    second = export.export_explainer(explainer, performer, base, "explainer")
    assert os.path.basename(second) == "2"
    assert sorted(os.listdir(model_dir)) == ["1", "2"]  # no staging folder left behind
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_explainer(explainer, performer, base, "explainer", version=2)
    export.export_explainer(explainer, performer, base, "explainer", version=2, overwrite=True)
    assert export.next_version(model_dir) == 3
    with pytest.raises(ValueError, match="positive"):
        export.export_explainer(explainer, performer, base, "explainer", version=0)


def test_assets_hold_class_names_and_filter_metadata(exported):
    performer, explainer, _, path = exported
    assert export.read_class_names(path) == ["background", "bird", "cat"]
    metadata = export.read_filter_metadata(path)
    categories = explainer.filter_categories()[1].numpy()
    assert [f["category_index"] for f in metadata["filters"]] == categories.tolist()
    assert all(f["category"] != "background" for f in metadata["filters"])  # negative class
    assert metadata["layer"] == "conv_interp_2" and metadata["map_shape"] == [8, 8, 16]
    assert metadata["max_image_pixels"] == MAX_PIXELS
    geometry = evaluation.performer_geometries(performer)["part_maps"]
    assert metadata["receptive_field"] == {"stride": geometry.stride, "offset": geometry.offset}


def test_warmup_requests_parse_and_replay(exported):
    _, _, _, path = exported
    loaded = tf.saved_model.load(path)
    records = list(tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE)).as_numpy_iterator())
    signatures = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == "explainer"
        signatures.append(request.model_spec.signature_name)
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["probabilities"].shape[0] == 1
    assert sorted(signatures) == sorted(export.SIGNATURES)


def _encoded(image, format, **options):
    """uint8 [H, W, 3] as an image file; [N, H, W, 3] as an animation of N frames."""
    buffer = io.BytesIO()
    frames = [Image.fromarray(frame) for frame in (image if image.ndim == 4 else [image])]
    frames[0].save(buffer, format=format, save_all=len(frames) > 1, append_images=frames[1:],
                   **options)
    return buffer.getvalue()


def _top_down_bmp(image):
    """A BMP with a negative height: rows stored top to bottom."""
    data = bytearray(_encoded(image[::-1], "BMP"))
    data[22:26] = (-image.shape[0]).to_bytes(4, "little", signed=True)
    return bytes(data)


def _header_check(data, max_pixels=10**6):
    """encoded_image_size's [height, width], once image_header_check passes."""
    data = tf.constant(data)
    export.image_header_check(data, tf.constant(0, tf.int64), max_pixels)
    return export.encoded_image_size(data)[1].numpy().tolist()


def test_image_sizes_come_from_the_header_of_every_format_decoded():
    image = _images((37, 53, 3))
    files = {"jpeg": _encoded(image, "JPEG"), "progressive jpeg": _encoded(image, "JPEG",
                                                                          progressive=True),
             "png": _encoded(image, "PNG"), "bmp": _encoded(image, "BMP"),
             "top-down bmp": _top_down_bmp(image), "webp": _encoded(image, "WEBP"),
             "lossless webp": _encoded(image, "WEBP", lossless=True),
             "extended webp": _encoded(image, "WEBP", exif=b"Exif\0\0tag")}
    for name, data in files.items():
        assert _header_check(data) == [37, 53], name
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        assert decoded.shape == (37, 53, 3), name  # the size checked is the size decoded
    with pytest.raises(tf.errors.InvalidArgumentError, match="37 x 53 = 1961 pixels, over the "
                       "limit of 1960 pixels"):
        _header_check(files["png"], max_pixels=1960)


@pytest.mark.parametrize("data, phrase", [
    (_encoded(_images((8, 9, 3)), "GIF"), "is a GIF"),
    (_encoded(_images((2, 8, 9, 3)), "WEBP"), "is an animated WebP"),
    (b"\xff\x0a" + bytes(40), "is a JPEG XL file"),
    (b"\0\0\0\x0cJXL \r\n\x87\n" + bytes(40), "is a JPEG XL file"),
    (b"not an image", "is not an image file that image_bytes decodes"),
    (b"", "is not an image file"),
], ids=["gif", "animated-webp", "jpeg-xl", "jpeg-xl-container", "text", "empty"])
def test_formats_whose_header_does_not_bound_decoding_are_refused(data, phrase):
    with pytest.raises(tf.errors.InvalidArgumentError, match=phrase + ".*takes JPEG, PNG, BMP, "
                       "WebP files"):
        _header_check(data)


def test_signatures_refuse_images_over_the_pixel_limit(exported):
    _, _, _, path = exported
    loaded = tf.saved_model.load(path)
    large = _images((1, 80, 80, 3))
    for name in ("serving_default", "classify"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image is 80 x 80 = 6400 "
                           f"pixels, over the limit of {MAX_PIXELS}"):
            loaded.signatures[name](image=tf.constant(large))
    small = tf.io.encode_jpeg(_images((70, 70, 3))).numpy()  # 4900 pixels: within the limit
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes\\[1\\] is 80 x 80"):
        loaded.signatures["image_bytes"](
            image_bytes=tf.constant([small, _encoded(large[0], "PNG")]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes\\[0\\] is a GIF"):
        loaded.signatures["image_bytes"](image_bytes=tf.constant([_encoded(large[0], "GIF")]))
    assert loaded.signatures["image_bytes"](image_bytes=tf.constant([small]))["p"].shape == (1,)


def test_lossless_formats_give_the_answer_of_their_pixels(exported):
    _, _, _, path = exported
    loaded = tf.saved_model.load(path)
    image = _images((30, 41, 3), seed=7)
    direct = loaded.signatures["serving_default"](image=tf.constant(image[None]))
    files = [_encoded(image, "PNG"), _encoded(image, "BMP"), _top_down_bmp(image),
             _encoded(image, "WEBP", lossless=True)]
    out = loaded.signatures["image_bytes"](image_bytes=tf.constant(files))
    for key in export.EXPLANATION_OUTPUTS:
        np.testing.assert_allclose(out[key], np.repeat(direct[key], len(files), axis=0),
                                   atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("transpose_a, transpose_b", [(False, False), (False, True),
                                                      (True, False), (True, True)])
def test_matmul_gradient_of_the_export_equals_tensorflows(transpose_a, transpose_b):
    rng = np.random.default_rng(0)
    a = tf.constant(rng.normal(size=(5, 3) if transpose_a else (3, 5)), tf.float32)
    b = tf.constant(rng.normal(size=(4, 5) if transpose_b else (5, 4)), tf.float32)
    weights = tf.constant(rng.normal(size=(3, 4)), tf.float32)

    def product():
        return tf.reduce_sum(weights * tf.matmul(a, b, transpose_a=transpose_a,
                                                 transpose_b=transpose_b))

    @tf.function
    def with_export_gradient():
        with tf.compat.v1.get_default_graph().gradient_override_map(
                {"MatMul": export._MATMUL_GRADIENT}):
            y = product()
        return tf.gradients(y, [a, b])

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        y = product()
    for mine, reference in zip(with_export_gradient(), tape.gradient(y, [a, b])):
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-6)
