"""Receptive-field geometry of a feature map, derived from the Keras layer graph.

Location instability (docs/method.md, "Measuring parts") projects a filter's peak cell back to
image pixels, so the stride and centre offset of every map must be exact, including TensorFlow's
asymmetric "same" padding. They are computed by walking the graph from the image input, never
hard-coded.
"""

import dataclasses
import math

import keras
import numpy as np

from tf_explainer.keras_compat import layer_calls
from tf_explainer.performers.spec import layer_call, layer_path

# Layers that keep every cell where it is: elementwise maps, normalisations, noise.
_PASS_THROUGH = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
    keras.layers.ELU, keras.layers.Softmax, keras.layers.BatchNormalization,
    keras.layers.LayerNormalization, keras.layers.GroupNormalization,
    keras.layers.UnitNormalization, keras.layers.Dropout, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization, keras.layers.Rescaling, keras.layers.Normalization,
    keras.layers.Identity,
)
_MERGE = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
    keras.layers.Maximum, keras.layers.Minimum, keras.layers.Concatenate,
)
_SLIDING = (
    keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
)
_extra_pass_through = []


def register_pass_through(layer_class):
    """Declare a custom layer class geometry-neutral (it keeps each cell in place)."""
    _extra_pass_through.append(layer_class)
    return layer_class


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Where the cells of a feature map sit in the input image.

    0-based convention: the centre of cell i (0-based) is at pixel offset + i * stride
    (0-based pixels; pixel p covers [p - 0.5, p + 0.5]).
    """

    stride: float
    offset: float

    def cell_to_pixel(self, cells):
        """Image-pixel centres of 0-based cell indices (any array shape)."""
        return self.offset + np.asarray(cells, dtype=np.float64) * self.stride

    def to_official(self) -> tuple:
        """(stride, c) in the official code's 1-based cells and pixels: pixel = c + (i - 1) s."""
        return self.stride, self.offset + 1.0


class GeometryError(ValueError):
    """The receptive field of a layer cannot be derived from the graph."""


@dataclasses.dataclass(frozen=True)
class _Field:
    """Per-axis (rows, columns) stride and offset of one tensor, or why it has none."""

    strides: tuple = (1.0, 1.0)
    offsets: tuple = (0.0, 0.0)
    undefined: str = ""


def receptive_field(model: keras.Model, layer_name: str) -> ReceptiveField:
    """Stride and centre offset of `layer_name`'s output (plain name or "outer/inner" path)."""
    path = layer_path(model, layer_name)
    fields = {id(t): _Field(undefined=f"input {t.name!r} is not the image input")
              for t in model.inputs[1:]}
    fields[id(model.inputs[0])] = _Field()
    field, shape = _field_of_layer(model, path, fields)
    if field.undefined:
        raise GeometryError(f"No receptive field for {layer_name!r}: {field.undefined}")
    if len(shape) != 4:
        raise GeometryError(
            f"Layer {layer_name!r} outputs shape {tuple(shape)}, not a 2-D feature map.")
    if field.strides[0] != field.strides[1] or field.offsets[0] != field.offsets[1]:
        raise GeometryError(
            f"Layer {layer_name!r} has different geometry along rows (stride "
            f"{field.strides[0]}, offset {field.offsets[0]}) and columns (stride "
            f"{field.strides[1]}, offset {field.offsets[1]}); use a square input and kernels.")
    return ReceptiveField(stride=float(field.strides[0]), offset=float(field.offsets[0]))


def _field_of_layer(model, path, input_fields):
    """Field and shape of the layer at `path` in `model`, given the fields of its inputs."""
    fields = _graph_fields(model, input_fields)
    layer = model.get_layer(path[0])
    call = layer_call(model, layer)
    if len(path) == 1:
        output = call.outputs[0]
        return fields[id(output)], output.shape
    inner_inputs = {id(inner): fields[id(outer)]
                    for inner, outer in zip(layer.inputs, call.inputs)}
    return _field_of_layer(layer, path[1:], inner_inputs)


def _graph_fields(model, input_fields) -> dict:
    """Field of every tensor in `model`'s graph; unsupported layers mark theirs undefined."""
    fields = dict(input_fields)
    for call in layer_calls(model):
        op = call.operation
        if isinstance(op, keras.layers.InputLayer):
            continue
        if isinstance(op, keras.Model):
            inner_inputs = {id(inner): fields[id(outer)]
                            for inner, outer in zip(op.inputs, call.inputs)}
            inner = _graph_fields(op, inner_inputs)
            outputs = [inner[id(t)] for t in op.outputs]
        else:
            outputs = [_apply(op, call, [fields[id(t)] for t in call.inputs])]
            outputs *= len(call.outputs)
        for tensor, field in zip(call.outputs, outputs):
            fields[id(tensor)] = field
    return fields


def _spatial_axes(layer) -> tuple:
    return (2, 3) if getattr(layer, "data_format", None) == "channels_first" else (1, 2)


def _apply(layer, call, in_fields) -> _Field:
    """The field of `layer`'s output from the fields of its inputs."""
    if isinstance(layer, _MERGE):
        return _merge(layer, call, in_fields)
    field = in_fields[0]
    if field.undefined:
        return field
    if isinstance(layer, _PASS_THROUGH + tuple(_extra_pass_through)):
        return field
    if isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)):
        padding = isinstance(layer, keras.layers.ZeroPadding2D)
        shifts = [-before if padding else before
                  for before, _ in (layer.padding if padding else layer.cropping)]
        return _Field(field.strides, tuple(o + d * s for o, d, s in
                                           zip(field.offsets, shifts, field.strides)))
    if isinstance(layer, _SLIDING):
        return _slide(layer, call, field)
    return _Field(undefined=f"layer {layer.name!r} of type {type(layer).__name__} has no "
                            "supported receptive-field rule")


def _slide(layer, call, field) -> _Field:
    """A conv or pooling window: TensorFlow pads 'same' by pad_total // 2 before."""
    kernel = getattr(layer, "kernel_size", None) or layer.pool_size
    dilation = getattr(layer, "dilation_rate", (1, 1))
    in_shape = call.inputs[0].shape
    strides, offsets = [], []
    for axis, shape_axis in enumerate(_spatial_axes(layer)):
        size, stride = in_shape[shape_axis], layer.strides[axis]
        extent = dilation[axis] * (kernel[axis] - 1) + 1
        if layer.padding == "valid":
            before = 0
        elif stride == 1:
            before = (extent - 1) // 2
        elif size is None:
            return _Field(undefined=(
                f"layer {layer.name!r} has 'same' padding with stride {stride} on an input of "
                "unknown size; build the model with a fixed input shape"))
        else:
            before = max((math.ceil(size / stride) - 1) * stride + extent - size, 0) // 2
        offsets.append(field.offsets[axis] + (extent - 1 - 2 * before) / 2 * field.strides[axis])
        strides.append(field.strides[axis] * stride)
    return _Field(tuple(strides), tuple(offsets))


def _merge(layer, call, in_fields) -> _Field:
    """Branches that share the output grid must agree; broadcast (1 x 1) branches are ignored."""
    axes = _spatial_axes(layer)
    out_shape = call.outputs[0].shape
    grid = [f for f, t in zip(in_fields, call.inputs)
            if len(t.shape) != 4 or tuple(t.shape[a] for a in axes)
            == tuple(out_shape[a] for a in axes)]
    if not grid:
        return _Field(undefined=f"no input of merge layer {layer.name!r} is on its output grid")
    for field in grid:
        if field.undefined:
            return field
    if any(f != grid[0] for f in grid[1:]):
        return _Field(undefined=(
            f"the inputs of merge layer {layer.name!r} have different receptive fields: "
            + ", ".join(f"stride {f.strides} offset {f.offsets}" for f in grid)))
    return grid[0]
