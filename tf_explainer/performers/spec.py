"""What the explainer needs to know about a frozen performer, and how to tap its layers.

A layer is named by its plain name or, inside nested Functional models, by a path
"outer_block/inner_layer". Every lookup failure lists the names that do exist.
"""

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import keras

from tf_explainer.keras_compat import LayerCall, layer_calls


class LayerNotFoundError(ValueError):
    """A layer name that the performer does not have, or one of the wrong kind."""


def _is_container(layer):
    return isinstance(layer, keras.Model)


def layer_names(model: keras.Model, prefix: str = "") -> list:
    """All layer names of `model`, nested ones as "outer/inner" paths."""
    names = []
    for layer in model.layers:
        path = prefix + layer.name
        names.append(path)
        if _is_container(layer):
            names.extend(layer_names(layer, path + "/"))
    return names


def layer_path(model: keras.Model, name: str) -> list:
    """The path of layer names from `model` down to the layer `name` (plain or "outer/inner")."""
    if "/" in name:
        path = name.split("/")
    else:
        matches = [p for p in layer_names(model) if p.split("/")[-1] == name]
        if len(matches) > 1:
            raise LayerNotFoundError(
                f"Layer name {name!r} is ambiguous in {model.name!r}: {matches}. Use the full path.")
        path = matches[0].split("/") if matches else [name]
    current = model
    for depth, part in enumerate(path):
        available = [l.name for l in current.layers] if _is_container(current) else []
        if part not in available:
            raise LayerNotFoundError(
                f"No layer {name!r} in performer {model.name!r}. "
                f"Available layers: {', '.join(layer_names(model))}")
        current = current.get_layer(part)
        if depth < len(path) - 1 and not _is_container(current):
            raise LayerNotFoundError(f"{'/'.join(path[:depth + 1])!r} is not a nested model.")
    return path


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called `name` (plain or "outer/inner" path), searching nested models."""
    layer = model
    for part in layer_path(model, name):
        layer = layer.get_layer(part)
    return layer


def layer_call(model: keras.Model, layer) -> LayerCall:
    """The first call of `layer` (a layer or nested model of `model`) in `model`'s graph."""
    for call in layer_calls(model):
        if call.operation is layer:
            return call
    raise LayerNotFoundError(f"Layer {layer.name!r} is not called in {model.name!r}.")


class TensorSource(NamedTuple):
    """Where a symbolic tensor is computed: `call` in the graph of `graph`, giving `tensor`."""

    graph: keras.Model
    call: LayerCall
    tensor: object


def tensor_source(model: keras.Model, tensor) -> TensorSource:
    """The layer call that computes `tensor` of `model`'s graph; a tensor that a nested model
    outputs is followed into that model, down to the layer that computes it."""
    while True:
        for call in layer_calls(model):
            index = next((i for i, t in enumerate(call.outputs) if t is tensor), None)
            if index is not None:
                break
        else:
            raise LayerNotFoundError(
                f"Tensor {tensor.name!r} is not in the graph of {model.name!r}.")
        if not isinstance(call.operation, keras.Model):
            return TensorSource(model, call, tensor)
        model, tensor = call.operation, call.operation.outputs[index]


def _call_inputs(model: keras.Model, container: keras.Model):
    """The symbolic inputs `container` was called on inside `model`'s graph."""
    args = layer_call(model, container).inputs
    return args[0] if len(args) == 1 else list(args)


def _tap(model: keras.Model, paths: Sequence[list], inputs, extra_outputs=()) -> list:
    """Symbolic outputs of the layers at `paths`, then `extra_outputs` (symbolic tensors of
    `model`'s own graph), computed from `inputs` of `model` in one pass."""
    direct = [i for i, p in enumerate(paths) if len(p) == 1]
    nested = {}
    for i, p in enumerate(paths):
        if len(p) > 1:
            nested.setdefault(p[0], []).append(i)
    graph_outputs = [model.get_layer(paths[i][0]).output for i in direct]
    for container_name, indices in nested.items():
        container = model.get_layer(container_name)
        sub_inputs = _call_inputs(model, container)
        graph_outputs.extend(_tap(container, [paths[i][1:] for i in indices], sub_inputs))
    order = direct + [i for indices in nested.values() for i in indices]
    taps = keras.Model(model.inputs, graph_outputs + list(extra_outputs))(inputs)
    if not isinstance(taps, (list, tuple)):
        taps = [taps]
    result = [None] * len(paths)
    for i, tensor in zip(order, taps):
        result[i] = tensor
    return result + list(taps[len(graph_outputs):])


def tap_model(model: keras.Model, names: dict, name: str = "performer_taps",
              outputs_key: Optional[str] = None) -> keras.Model:
    """A model from the performer's input to a dict {key: output of layer names[key]}, plus
    {outputs_key: the model's own output} when outputs_key is given.

    Layers inside nested Functional models are reached through the inputs the nested model
    was called on, so the performer's own weights are shared, never copied, and the whole dict
    comes from one forward pass.
    """
    keys = list(names)
    paths = [layer_path(model, names[k]) for k in keys]
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="image")
    if outputs_key is not None:
        keys.append(outputs_key)
    outputs = _tap(model, paths, inputs, model.outputs[:1] if outputs_key is not None else ())
    return keras.Model(inputs, dict(zip(keys, outputs)), name=name)


@dataclasses.dataclass
class Performer:
    """A frozen CNN described for the explainer (see docs/method.md, Structure).

    model: the performer, image -> class scores.
    target_layer: the n x n x M feature map the explainer paraphrases (e.g. relu4).
    reconstruct_layers: upper layers the decoder reconstructs, in order (e.g. fc6, fc7 post-ReLU).
    head_layers: layers that map the last reconstructed output to class scores, applied in order.
    top_conv_layer: conv layer whose kernel initialises conv-interp-1 (e.g. conv5).
    pool_layer: pooling layer copied into the explainer (e.g. pool5); None means no pooling.
    decoder_init_layers: per reconstructed layer, a Dense layer whose weights initialise the
      decoder layer, or None for random initialisation. Defaults to the reconstruct layers
      themselves when they are Dense.
    decoder_activations: per reconstructed layer, "relu" (post-ReLU targets) or None.
    class_names: names of the classes the head scores, index-aligned with its outputs.
    preprocess: maps float32 RGB images in [0, 255] to the performer's input.
    input_size: (height, width) the performer takes.
    top_conv_output_layer: the layer whose output is the top conv's post-ReLU map, for metrics.
    scores_are_logits: whether the head emits logits (True) or probabilities.
    """

    model: keras.Model
    target_layer: str
    reconstruct_layers: Sequence[str]
    head_layers: Sequence[str]
    class_names: Sequence[str]
    preprocess: Callable
    input_size: tuple
    top_conv_layer: Optional[str] = None
    pool_layer: Optional[str] = None
    decoder_init_layers: Optional[Sequence[Optional[str]]] = None
    decoder_activations: Optional[Sequence[Optional[str]]] = None
    top_conv_output_layer: Optional[str] = None
    scores_are_logits: bool = True

    def __post_init__(self):
        self.reconstruct_layers = list(self.reconstruct_layers)
        self.head_layers = list(self.head_layers)
        for name in [self.target_layer, *self.reconstruct_layers, *self.head_layers,
                     self.top_conv_layer, self.pool_layer, self.top_conv_output_layer]:
            if name is not None:
                find_layer(self.model, name)
        target_shape = find_layer(self.model, self.target_layer).output.shape
        if len(target_shape) != 4:
            raise LayerNotFoundError(
                f"Target layer {self.target_layer!r} outputs shape {tuple(target_shape)}, not a 4-D "
                f"feature map. Available layers: {', '.join(layer_names(self.model))}")
        if not self.reconstruct_layers:
            raise ValueError("A performer needs at least one layer to reconstruct.")
        if self.decoder_init_layers is None:
            self.decoder_init_layers = [
                n if isinstance(find_layer(self.model, n), keras.layers.Dense) else None
                for n in self.reconstruct_layers]
        if self.decoder_activations is None:
            self.decoder_activations = ["relu"] * len(self.reconstruct_layers)
        if not (len(self.decoder_init_layers) == len(self.decoder_activations)
                == len(self.reconstruct_layers)):
            raise ValueError("decoder_init_layers and decoder_activations need one entry per "
                             "reconstructed layer.")
        self.model.trainable = False

    @property
    def target_shape(self) -> tuple:
        return tuple(find_layer(self.model, self.target_layer).output.shape[1:])

    @property
    def reconstruct_dims(self) -> list:
        return [int(find_layer(self.model, n).output.shape[-1]) for n in self.reconstruct_layers]

    def taps(self) -> keras.Model:
        """image -> {"target", "recon_0".., "scores"}, plus "top" (top conv's post-ReLU map) and
        "pool" (the pooling layer's output) when those layers are named."""
        names = {"target": self.target_layer}
        if self.pool_layer:
            names["pool"] = self.pool_layer
        names.update({f"recon_{i}": n for i, n in enumerate(self.reconstruct_layers)})
        if self.top_conv_output_layer:
            names["top"] = self.top_conv_output_layer
        return tap_model(self.model, names, outputs_key="scores")

    def head(self) -> keras.Model:
        """The frozen head: last reconstructed output -> class scores."""
        dim = self.reconstruct_dims[-1]
        inputs = keras.Input((dim,), name="reconstructed")
        x = inputs
        for name in self.head_layers:
            x = find_layer(self.model, name)(x)
        head = keras.Model(inputs, x, name="performer_head")
        head.trainable = False
        return head
