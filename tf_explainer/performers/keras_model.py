"""Any Keras classifier as a performer: the user names its target, reconstructed and head layers."""

import os
from typing import Callable, Optional, Sequence

import h5py
import keras
import tensorflow as tf

from tf_explainer.performers.spec import (Performer, find_layer, layer_call, layer_path,
                                         tensor_source)

# Layers that keep the sign of their input, so a post-ReLU map stays non-negative through them.
_SIGN_PRESERVING = (
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D, keras.layers.Identity,
)


def identity_preprocess(images):
    """For models that take RGB in [0, 255] as they are (e.g. with built-in rescaling)."""
    return tf.cast(images, tf.float32)


def resolve_class_names(num_classes: Optional[int], class_names: Optional[Sequence[str]]) -> list:
    """Class names index-aligned with the head; generic ones when none are given."""
    if class_names is None:
        if not num_classes:
            raise ValueError("Give num_classes or class_names.")
        return [f"class_{i}" for i in range(num_classes)]
    class_names = [str(n) for n in class_names]
    if num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes.")
    return class_names


def _legacy_layer_names(path: str) -> list:
    """Layer names in a legacy Keras .h5 file (weights-only or whole model)."""
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file
        return [n.decode("utf8") if isinstance(n, bytes) else str(n)
                for n in group.attrs.get("layer_names", [])]


def load_weights(model: keras.Model, weights_path, required_layers: Sequence[str] = ()):
    """Load weights from a local file.

    Keras 3 files (.weights.h5, .keras) load by structure. Legacy .h5/.hdf5 files, such as the
    keras-applications ImageNet files, load by layer name so extra or missing top layers are
    fine; `required_layers` must all be in such a file, which catches the wrong file early.
    """
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path!r} (nothing is downloaded).")
    if path.endswith((".weights.h5", ".keras")):
        model.load_weights(path)
    elif path.endswith((".h5", ".hdf5")):
        in_file = _legacy_layer_names(path)
        missing = [n for n in required_layers if n not in in_file]
        if missing:
            raise ValueError(f"Weights file {path!r} lacks layers {missing} of {model.name!r}; "
                             f"it has {in_file}.")
        model.load_weights(path, by_name=True)
    else:
        raise ValueError(f"Unknown weights format {path!r}: expected .weights.h5, .keras or .h5.")


def _is_post_relu(model: keras.Model, name: str) -> bool:
    """Whether layer `name`'s output is non-negative by construction: a ReLU seen through
    pooling/reshaping (and into nested models whose output it is)."""
    path = layer_path(model, name)
    graph = find_layer(model, "/".join(path[:-1])) if len(path) > 1 else model
    source = tensor_source(graph, layer_call(graph, graph.get_layer(path[-1])).outputs[0])
    while isinstance(source.call.operation, _SIGN_PRESERVING):
        source = tensor_source(source.graph, source.call.inputs[0])
    operation = source.call.operation
    if isinstance(operation, keras.layers.ReLU):
        return True
    return getattr(getattr(operation, "activation", None), "__name__", "") in ("relu", "relu6")


def from_keras_model(model: keras.Model, target_layer: str, reconstruct_layers: Sequence[str],
                     head_layers: Sequence[str] = (), class_names: Optional[Sequence[str]] = None,
                     preprocess: Optional[Callable] = None, top_conv_layer: Optional[str] = None,
                     pool_layer: Optional[str] = None,
                     decoder_activations: Optional[Sequence[Optional[str]]] = None,
                     scores_are_logits: bool = True, top_conv_output_layer: Optional[str] = None,
                     decoder_init_layers: Optional[Sequence[Optional[str]]] = None) -> Performer:
    """Describe any Keras image classifier as a performer; layers may sit in nested models.

    Layer names are plain or "outer/inner" paths. head_layers map the last reconstructed layer
    to the scores (empty when that layer is the scores). decoder_activations default to "relu"
    for reconstructed layers that are post-ReLU (also through pooling, e.g. global average
    pooling of a ReLU map) and None otherwise (e.g. logits). top_conv_output_layer defaults to
    top_conv_layer. preprocess defaults to passing [0, 255] RGB through.
    """
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or None in shape[:2]:
        raise ValueError(f"Model {model.name!r} needs a fixed image input shape (H, W, C), "
                         f"has {shape}.")
    if decoder_activations is None:
        decoder_activations = ["relu" if _is_post_relu(model, n) else None
                               for n in reconstruct_layers]
    return Performer(
        model=model,
        target_layer=target_layer,
        reconstruct_layers=reconstruct_layers,
        head_layers=head_layers,
        class_names=resolve_class_names(int(model.outputs[0].shape[-1]), class_names),
        preprocess=preprocess or identity_preprocess,
        input_size=shape[:2],
        top_conv_layer=top_conv_layer,
        pool_layer=pool_layer,
        decoder_init_layers=decoder_init_layers,
        decoder_activations=decoder_activations,
        top_conv_output_layer=top_conv_output_layer or top_conv_layer,
        scores_are_logits=scores_are_logits,
    )
