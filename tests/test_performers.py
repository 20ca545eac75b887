"""Built-in performers, the Keras-model adaptor and weight loading."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_explainer.performers import (PERFORMERS, LayerNotFoundError, build_performer,
                                     from_keras_model, receptive_field)
from tf_explainer.performers.vgg import VGG16_CONV_LAYERS, caffe_preprocess


def _images(performer, batch, seed=0):
    height, width = performer.input_size
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


def _head_reproduces_scores(performer, batch):
    """taps() and head() agree with the performer's own forward pass."""
    x = performer.preprocess(_images(performer, batch))
    out = performer.taps()(x)
    np.testing.assert_allclose(out["scores"], performer.model(x), rtol=1e-5, atol=1e-5)
    head_scores = performer.head()(out[f"recon_{len(performer.reconstruct_layers) - 1}"])
    np.testing.assert_allclose(head_scores, out["scores"], rtol=1e-4, atol=1e-4)
    return out


def test_registry_lists_every_built_in():
    assert PERFORMERS == ["small_vgg", "alexnet", "vgg_m", "vgg_s", "vgg16"]
    with pytest.raises(ValueError, match="small_vgg"):
        build_performer("resnet", 3)


def test_small_vgg_taps_shapes_and_head():
    performer = build_performer("small_vgg", 3, class_names=["cat", "dog", "none"])
    assert performer.input_size == (64, 64)
    assert performer.class_names == ["cat", "dog", "none"]
    assert (performer.target_layer, performer.top_conv_layer, performer.top_conv_output_layer,
            performer.pool_layer) == ("relu4", "conv5", "relu5", "pool5")
    assert performer.reconstruct_layers == ["fc6", "fc7"]
    assert performer.decoder_init_layers == ["fc6", "fc7"]
    assert performer.decoder_activations == ["relu", "relu"]
    assert performer.head_layers == ["fc8"]
    assert performer.target_shape == (16, 16, 64)
    assert performer.reconstruct_dims == [256, 256]
    assert not performer.model.trainable
    out = _head_reproduces_scores(performer, batch=2)
    assert out["target"].shape == (2, 16, 16, 64)
    assert out["top"].shape == (2, 16, 16, 64)
    assert out["scores"].shape == (2, 3)
    assert float(tf.reduce_min(out["recon_0"])) >= 0.0


@pytest.mark.parametrize("name, target_shape, pool_shape, top_channels", [
    ("alexnet", (13, 13, 384), (6, 6, 256), 256),
    ("vgg_m", (13, 13, 512), (6, 6, 512), 512),
    ("vgg_s", (17, 17, 512), (6, 6, 512), 512),
    ("vgg16", (14, 14, 512), (7, 7, 512), 512),
])
def test_large_performers_at_paper_size(name, target_shape, pool_shape, top_channels):
    """Built with random weights and checked without data: a forward pass at 224 is slow here."""
    performer = build_performer(name, 5)
    model = performer.model
    assert performer.target_shape == target_shape
    assert tuple(model.get_layer(performer.pool_layer).output.shape[1:]) == pool_shape
    top = model.get_layer(performer.top_conv_layer)
    assert isinstance(top, keras.layers.Conv2D) and top.filters == top_channels
    assert tuple(model.get_layer(performer.top_conv_output_layer).output.shape[1:]) == (
        *target_shape[:2], top_channels)
    assert performer.reconstruct_dims == [4096, 4096]
    assert performer.decoder_activations == ["relu", "relu"]
    assert all(isinstance(model.get_layer(n), keras.layers.Dense)
               for n in performer.decoder_init_layers)
    assert model.get_layer(performer.head_layers[0]).units == 5
    assert performer.class_names == [f"class_{i}" for i in range(5)]
    assert performer.scores_are_logits


@pytest.mark.parametrize("name, size", [("alexnet", 99), ("vgg_m", 96), ("vgg_s", 96),
                                        ("vgg16", 32)])
def test_large_performers_head_reproduces_scores_at_small_input(name, size):
    performer = build_performer(name, 4, input_size=size)
    assert performer.input_size == (size, size)
    out = _head_reproduces_scores(performer, batch=2)
    assert out["target"].shape == (2, *performer.target_shape)


def test_lrn_performer_runs_under_mixed_bfloat16():
    """TensorFlow has no bfloat16 LRN kernel on CPU; the logits stay float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        performer = build_performer("vgg_m", 3, input_size=96)
        scores = performer.model(performer.preprocess(_images(performer, 1)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert scores.dtype == tf.float32
    assert np.all(np.isfinite(scores))


def test_preprocessing_is_graph_and_dataset_friendly():
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        caffe_preprocess(images),
        keras.applications.vgg16.preprocess_input(images.copy()), rtol=1e-6, atol=1e-4)
    expected = {"small_vgg": images / 127.5 - 1.0,
                "alexnet": images - np.array([123.68, 116.779, 103.939], np.float32)}
    for name, want in expected.items():
        preprocess = build_performer(name, 2, input_size=67).preprocess
        mapped = tf.data.Dataset.from_tensor_slices(images).map(preprocess).batch(2)
        np.testing.assert_allclose(next(iter(mapped)), want, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(tf.function(preprocess)(images), want, rtol=1e-5, atol=1e-4)


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        build_performer("small_vgg", 3, class_names=["a", "b"])


def test_weights_path_round_trip(tmp_path):
    trained = build_performer("small_vgg", 3).model
    path = str(tmp_path / "small_vgg.weights.h5")
    trained.save_weights(path)
    loaded = build_performer("small_vgg", 3, weights_path=path).model
    for expected, actual in zip(trained.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    with pytest.raises(FileNotFoundError):
        build_performer("small_vgg", 3, weights_path=str(tmp_path / "missing.weights.h5"))


def _write_keras_applications_h5(path, layers):
    """A weights file laid out like keras-applications' vgg16_weights_tf_dim_ordering_tf_kernels
    (Keras 2 HDF5: root layer_names, per-layer weight_names, datasets 'layer/kernel:0')."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [name.encode() for name, _ in layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.1.5"
        for name, arrays in layers:
            group = file.create_group(name)
            weight_names = [f"{name}/{w}:0" for w in ("kernel", "bias")[:len(arrays)]]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], "S")
            for weight_name, array in zip(weight_names, arrays):
                group.create_dataset(weight_name, data=array)


def _vgg16_file_layers(rng, top_input=None):
    """(name, [kernel, bias]) for a VGG16 weights file; with fc layers when top_input is set."""
    channels = [3]
    layers = [("input_1", [])]
    for name in VGG16_CONV_LAYERS:
        filters = {"block1": 64, "block2": 128, "block3": 256}.get(name[:6], 512)
        layers.append((name, [rng.standard_normal((3, 3, channels[-1], filters), np.float32),
                              rng.standard_normal(filters, np.float32)]))
        channels.append(filters)
        if name in ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3",
                    "block5_conv3"):
            layers.append((name[:6] + "_pool", []))
    if top_input:
        layers.append(("flatten", []))
        for name, (rows, cols) in (("fc1", (top_input, 4096)), ("fc2", (4096, 4096)),
                                   ("predictions", (4096, 1000))):
            layers.append((name, [rng.standard_normal((rows, cols), np.float32),
                                  rng.standard_normal(cols, np.float32)]))
    return layers


def test_vgg16_loads_keras_applications_notop_file(tmp_path):
    rng = np.random.default_rng(2)
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    layers = _vgg16_file_layers(rng)
    _write_keras_applications_h5(path, layers)
    model = build_performer("vgg16", 3, input_size=32, weights_path=path).model
    for name, arrays in layers[1:]:
        for expected, actual in zip(arrays, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(actual, expected)
    assert model.get_layer("fc8").units == 3


def test_vgg16_loads_keras_applications_top_file(tmp_path):
    """With top: fc1/fc2 (fc6/fc7) load; a 1000-class head takes the ImageNet classifier."""
    rng = np.random.default_rng(3)
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    layers = dict(_vgg16_file_layers(rng, top_input=512))  # 32 x 32 input: 1 x 1 x 512
    _write_keras_applications_h5(path, list(layers.items()))
    performer = build_performer("vgg16", 1000, input_size=32, weights_path=path)
    assert performer.head_layers == ["predictions"]
    for name in ("block1_conv1", "block5_conv3", "fc1", "fc2", "predictions"):
        for expected, actual in zip(layers[name], performer.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(actual, expected)
    new_head = build_performer("vgg16", 3, input_size=32, weights_path=path).model
    np.testing.assert_array_equal(new_head.get_layer("fc2").get_weights()[0], layers["fc2"][0])
    assert new_head.get_layer("fc8").get_weights()[0].shape == (4096, 3)


def test_weights_file_of_another_network_is_rejected(tmp_path):
    path = str(tmp_path / "other.h5")
    _write_keras_applications_h5(path, [("conv1", [np.zeros((3, 3, 3, 4), np.float32)])])
    with pytest.raises(ValueError, match="lacks layers.*block1_conv1"):
        build_performer("vgg16", 3, input_size=32, weights_path=path)


def _nested_mobilenet():
    base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                          input_shape=(32, 32, 3))
    image = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base(image))
    return base, keras.Model(image, keras.layers.Dense(4, name="logits_layer")(pooled))


def test_from_keras_model_on_a_nested_functional_model():
    base, model = _nested_mobilenet()
    target = f"{base.name}/block_6_expand_relu"
    performer = from_keras_model(model, target, ["global_average_pooling2d", "logits_layer"],
                                 top_conv_layer="block_6_expand")
    assert performer.input_size == (32, 32)
    assert performer.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert performer.decoder_activations == ["relu", None]
    assert performer.decoder_init_layers == [None, "logits_layer"]
    assert performer.top_conv_output_layer == "block_6_expand"
    assert performer.target_shape == (4, 4, 192)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = performer.taps()(x)
    inner = keras.Model(base.input, base.get_layer("block_6_expand_relu").output)
    np.testing.assert_allclose(out["target"], inner(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["recon_0"], tf.reduce_mean(base(x), axis=[1, 2]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["recon_1"], out["scores"], rtol=1e-5, atol=1e-5)
    head = performer.head()
    np.testing.assert_array_equal(head(out["recon_1"]), out["recon_1"])
    assert receptive_field(model, target).stride == 8.0


def test_from_keras_model_plain_names_and_explicit_choices():
    base, model = _nested_mobilenet()
    performer = from_keras_model(model, "block_13_expand_relu", ["global_average_pooling2d"],
                                 head_layers=["logits_layer"], class_names=["a", "b", "c", "d"],
                                 decoder_activations=[None], scores_are_logits=False)
    assert performer.target_shape == (2, 2, 576)
    assert performer.class_names == ["a", "b", "c", "d"]
    assert performer.decoder_activations == [None]
    assert not performer.scores_are_logits
    np.testing.assert_array_equal(performer.preprocess(np.array([0.0, 255.0])), [0.0, 255.0])


@pytest.mark.parametrize("field", ["target_layer", "reconstruct_layers"])
def test_missing_layer_lists_available_layers(field):
    base, model = _nested_mobilenet()
    names = {"target_layer": f"{base.name}/block_6_expand_relu",
             "reconstruct_layers": ["global_average_pooling2d", "logits_layer"]}
    names[field] = "fc6" if field == "target_layer" else ["fc6"]
    with pytest.raises(LayerNotFoundError, match="No layer 'fc6'.*Available layers:.*logits_layer"):
        from_keras_model(model, **names)


def test_model_without_fixed_input_size_is_rejected():
    image = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(image))
    with pytest.raises(ValueError, match="fixed image input shape"):
        from_keras_model(keras.Model(image, x), "conv", ["conv"])


def test_from_keras_model_on_a_sequential_model():
    """A Sequential's graph: post-ReLU detection through pooling, taps from one forward pass."""
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=2, name="conv"),
        keras.layers.ReLU(name="relu"), keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(3, name="logits")], name="plain_sequential")
    performer = from_keras_model(model, "relu", ["pool", "logits"], top_conv_layer="conv")
    assert performer.decoder_activations == ["relu", None]
    assert performer.target_shape == (15, 15, 4)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = performer.taps()(x)
    np.testing.assert_allclose(out["scores"], model(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["recon_0"], tf.reduce_mean(out["target"], axis=[1, 2]),
                               rtol=1e-5, atol=1e-5)
    assert receptive_field(model, "relu").stride == 2.0
