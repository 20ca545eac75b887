"""Receptive-field geometry: official reference values and an empirical check by perturbation."""

import keras
import numpy as np
import pytest

from tf_explainer.performers import build_performer, receptive_field
from tf_explainer.performers.geometry import GeometryError, ReceptiveField
from tf_explainer.performers.spec import tap_model


@pytest.mark.parametrize("name, layers, official", [
    ("alexnet", ["conv5", "relu5", "relu4"], (16.0, 18.0)),
    ("vgg_m", ["conv5", "relu5", "relu4"], (16.0, 18.0)),
    ("vgg_s", ["conv5", "relu5", "relu4"], (12.0, 21.0)),
    ("vgg16", ["block5_conv3", "block5_conv2"], (16.0, 8.5)),
])
def test_reference_geometry_of_built_in_performers(name, layers, official):
    """The stride and first-cell centre of the official code, at 224/227 input (1-based)."""
    model = build_performer(name, 2).model
    for layer in layers:
        field = receptive_field(model, layer)
        assert field.to_official() == official
        assert field.offset == official[1] - 1.0


def test_small_vgg_target_geometry():
    field = receptive_field(build_performer("small_vgg", 2).model, "relu4")
    assert field == ReceptiveField(stride=4.0, offset=1.5)


def test_cell_to_pixel_works_on_any_shape():
    field = ReceptiveField(stride=16.0, offset=7.5)
    cells = np.array([[0, 1], [2, 13]])
    np.testing.assert_array_equal(field.cell_to_pixel(cells), [[7.5, 23.5], [39.5, 215.5]])
    assert field.cell_to_pixel(3) == 55.5
    assert field.to_official() == (16.0, 8.5)


def _make_positive(model):
    """Positive kernels, zero biases: a cell is non-zero exactly when a lit input pixel is in its
    receptive field (no cancellation, max pooling passes any positive value)."""
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if variable.name in ("bias", "beta", "moving_mean"):
            variable.assign(np.zeros_like(value))
        else:
            variable.assign(np.abs(value) + 1e-3)


def _empirical_field_checks(model, layer_names, size):
    """For every layer, the centre of each cell's support, found by lighting one image row (or
    column) at a time, must equal offset + i * stride. Only cells with a whole receptive field
    count: widest support of the layer, not touching the image border (padding clips the others,
    not always at the border when kernels are dilated)."""
    lines = np.zeros((2 * size, size, size, 3), np.float32)
    for k in range(size):
        lines[k, k, :, :] = 1.0
        lines[size + k, :, k, :] = 1.0
    taps = tap_model(model, {f"tap_{i}": name for i, name in enumerate(layer_names)})
    outputs = taps.predict(lines, batch_size=64, verbose=0)
    checked = {}
    for index, name in enumerate(layer_names):
        field = receptive_field(model, name)
        hit = np.abs(outputs[f"tap_{index}"]).max(axis=-1) > 0
        supports = []
        for axis, lit in ((0, hit[:size]), (1, hit[size:])):
            for cell in range(lit.shape[1 + axis]):
                support = np.nonzero(np.take(lit, cell, axis=1 + axis).any(axis=1))[0]
                if len(support):
                    supports.append((cell, support[0], support[-1]))
        widest = max(last - first for _, first, last in supports)
        whole = [(cell, first, last) for cell, first, last in supports
                 if last - first == widest and first > 0 and last < size - 1]
        for cell, first, last in whole:
            assert (first + last) / 2 == field.cell_to_pixel(cell), (name, cell, first, last)
        checked[name] = len(whole)
    return checked


def test_geometry_matches_perturbation_on_a_net_with_every_rule():
    """Asymmetric zero padding, TF 'same' padding that pads more after (stride 2, even input),
    even kernels, dilation, depthwise and separable convs, both poolings and cropping."""
    size = 127
    image = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D(((2, 1), (2, 1)), name="pad")(image)
    x = keras.layers.Conv2D(3, 5, strides=2, name="conv_valid_s2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.Conv2D(3, 4, padding="same", name="conv_even_same")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="maxpool_same")(x)
    x = keras.layers.Conv2D(3, 3, strides=2, padding="same", name="conv_same_s2")(x)
    x = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same", name="depthwise")(x)
    x = keras.layers.AveragePooling2D(2, 1, name="avgpool")(x)
    x = keras.layers.Cropping2D(((1, 0), (1, 0)), name="crop")(x)
    x = keras.layers.SeparableConv2D(3, 3, padding="same", name="separable")(x)
    model = keras.Model(image, x)
    _make_positive(model)
    names = ["pad", "conv_valid_s2", "act", "conv_even_same", "maxpool_same", "conv_same_s2",
             "depthwise", "avgpool", "crop", "separable"]
    pooled = receptive_field(model, "maxpool_same")
    assert model.get_layer("maxpool_same").output.shape[1] % 2 == 0
    assert receptive_field(model, "conv_same_s2").offset == pooled.offset + pooled.stride
    checked = _empirical_field_checks(model, names, size)
    assert all(count > 0 for count in checked.values()), checked


def test_geometry_inside_a_nested_model_matches_perturbation():
    """MobileNetV2 (ZeroPadding + valid depthwise, residual Add) nested in an outer model."""
    size = 96
    base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                          input_shape=(size, size, 3))
    image = keras.Input((size, size, 3))
    scores = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(image)))
    model = keras.Model(image, scores)
    _make_positive(model)
    names = [f"{base.name}/{n}" for n in
             ("Conv1", "block_2_add", "block_3_depthwise_relu", "block_6_expand_relu")]
    checked = _empirical_field_checks(model, names, size)
    assert all(count > 0 for count in checked.values()), checked
    assert receptive_field(model, "block_6_expand_relu") == receptive_field(base,
                                                                          "block_6_expand_relu")


def test_small_vgg_geometry_matches_perturbation():
    model = build_performer("small_vgg", 2).model
    _make_positive(model)
    checked = _empirical_field_checks(model, ["relu2", "relu4", "pool5"], 64)
    assert all(count > 0 for count in checked.values()), checked


def test_nested_sequential_equals_flat_model():
    def layers():
        return [keras.layers.Conv2D(2, 3, strides=2, padding="same", name="c1"),
                keras.layers.ReLU(name="r1"), keras.layers.MaxPooling2D(2, name="p1")]
    flat = keras.Sequential([keras.Input((30, 30, 3)), *layers()])
    image = keras.Input((30, 30, 3))
    inner = keras.Sequential([keras.Input((28, 28, 3)), *layers()], name="inner")
    outer = keras.Model(image, inner(keras.layers.Cropping2D(1, name="crop")(image)))
    expected = receptive_field(flat, "p1")
    assert receptive_field(outer, "inner/p1") == ReceptiveField(
        expected.stride, expected.offset + 1.0)


def test_unsupported_layer_is_named():
    image = keras.Input((16, 16, 3))
    x = keras.layers.UpSampling2D(name="upsample")(image)
    model = keras.Model(image, keras.layers.Conv2D(2, 3, name="conv")(x))
    with pytest.raises(GeometryError, match="upsample.*UpSampling2D"):
        receptive_field(model, "conv")


def test_layer_without_a_grid_is_rejected():
    image = keras.Input((16, 16, 3))
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(image))
    model = keras.Model(image, x)
    with pytest.raises(GeometryError, match="flat"):
        receptive_field(model, "flat")


def test_merge_of_misaligned_branches_is_rejected():
    image = keras.Input((16, 16, 3))
    shifted = keras.layers.Cropping2D(((2, 0), (2, 0)))(image)
    cropped = keras.layers.Cropping2D(((0, 2), (0, 2)))(image)
    model = keras.Model(image, keras.layers.Add(name="bad_add")([shifted, cropped]))
    with pytest.raises(GeometryError, match="bad_add"):
        receptive_field(model, "bad_add")


def test_same_padding_with_stride_needs_a_static_size():
    image = keras.Input((None, None, 3))
    model = keras.Model(image, keras.layers.Conv2D(2, 3, 2, padding="same", name="conv")(image))
    with pytest.raises(GeometryError, match="unknown size"):
        receptive_field(model, "conv")
