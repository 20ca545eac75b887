"""AlexNet, and the conv/ReLU/LRN/pool layout it shares with VGG-M, VGG-S and the small VGG.

Layers are named as in the papers and the official (MatConvNet) models: conv1, relu1, norm1,
pool1, ..., fc6, fc7, fc8, with separate ReLU layers so that relu4 can be a target layer.
Asymmetric MatConvNet paddings are explicit ZeroPadding2D layers, so every input size gets the
official grid. The single-tower form is used (no channel groups): grouped convolutions are not
implemented on every CPU build of TensorFlow.
"""

import dataclasses
from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

from tf_explainer.performers.geometry import register_pass_through
from tf_explainer.performers.keras_model import load_weights, resolve_class_names
from tf_explainer.performers.spec import Performer

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

Padding = Union[str, int, tuple]


def subtract_imagenet_mean(images):
    """[0, 255] RGB -> mean-free RGB, the input of the MatConvNet AlexNet/VGG-M/VGG-S models."""
    return tf.cast(images, tf.float32) - tf.constant(IMAGENET_MEAN_RGB, tf.float32)


@register_pass_through
@keras.saving.register_keras_serializable(package="tf_explainer")
class LocalResponseNorm(keras.layers.Layer):
    """Cross-channel local response normalisation (Krizhevsky et al. 2012: k=2, n=5).

    out = x / (bias + alpha * sum of x^2 over 2 * depth_radius + 1 channels) ** beta; Caffe and
    MatConvNet divide alpha by n, so their models convert with alpha / 5.
    """

    def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius = depth_radius
        self.bias = bias
        self.alpha = alpha
        self.beta = beta

    def call(self, inputs):
        # float32 inside: TensorFlow has no bfloat16 LRN kernel on CPU (mixed precision).
        normalised = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32), self.depth_radius, self.bias, self.alpha, self.beta)
        return tf.cast(normalised, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


@dataclasses.dataclass(frozen=True)
class ConvBlock:
    """conv{i} -> relu{i} [-> norm{i}] [-> pool{i}].

    padding: "same", "valid", or explicit zero padding (int or ((top, bottom), (left, right)))
      put before the conv as conv{i}_pad. pool_padding: zero padding before the pool (pool{i}_pad),
      as MatConvNet pads at the bottom/right; harmless for max pooling of ReLU maps.
    """

    filters: int
    kernel: int
    stride: int = 1
    padding: Padding = "same"
    norm: bool = False
    pool: Optional[int] = None
    pool_stride: Optional[int] = None
    pool_padding: Padding = 0


def classic_model(name: str, input_size: tuple, blocks: Sequence[ConvBlock], fc_units: int,
                  num_classes: int, dropout: float) -> keras.Model:
    """conv blocks -> flatten -> fc6/relu -> drop6 -> fc7/relu -> drop7 -> fc8 (logits).

    fc8 computes in float32 so that logits stay float32 under a mixed-precision policy.
    """
    image = keras.Input((*input_size, 3), name="image")
    x = image
    for i, block in enumerate(blocks, start=1):
        conv_padding = "valid"
        if isinstance(block.padding, str):
            conv_padding = block.padding
        elif block.padding:
            x = keras.layers.ZeroPadding2D(block.padding, name=f"conv{i}_pad")(x)
        x = keras.layers.Conv2D(block.filters, block.kernel, block.stride, conv_padding,
                                kernel_initializer="he_normal", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if block.norm:
            x = LocalResponseNorm(name=f"norm{i}")(x)
        if block.pool:
            if block.pool_padding:
                x = keras.layers.ZeroPadding2D(block.pool_padding, name=f"pool{i}_pad")(x)
            x = keras.layers.MaxPooling2D(block.pool, block.pool_stride or block.pool,
                                          name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for layer in (6, 7):
        x = keras.layers.Dense(fc_units, activation="relu", kernel_initializer="he_normal",
                               name=f"fc{layer}")(x)
        x = keras.layers.Dropout(dropout, name=f"drop{layer}")(x)
    scores = keras.layers.Dense(num_classes, dtype="float32", name="fc8")(x)
    return keras.Model(image, scores, name=name)


def square(size) -> tuple:
    """(height, width) from an int or a pair."""
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def classic_performer(model: keras.Model, class_names: Sequence[str], preprocess,
                      weights_path=None) -> Performer:
    """The paper's choice of layers for an AlexNet-style model built by classic_model."""
    if weights_path is not None:
        load_weights(model, weights_path, required_layers=[f"conv{i}" for i in range(1, 6)])
    return Performer(
        model=model, target_layer="relu4", reconstruct_layers=["fc6", "fc7"],
        head_layers=["fc8"], class_names=class_names, preprocess=preprocess,
        input_size=tuple(model.inputs[0].shape[1:3]), top_conv_layer="conv5",
        pool_layer="pool5", top_conv_output_layer="relu5", scores_are_logits=True)


ALEXNET_BLOCKS = (
    ConvBlock(96, 11, 4, "valid", norm=True, pool=3, pool_stride=2),
    ConvBlock(256, 5, norm=True, pool=3, pool_stride=2),
    ConvBlock(384, 3),
    ConvBlock(384, 3),
    ConvBlock(256, 3, pool=3, pool_stride=2),
)


def build_alexnet(num_classes: Optional[int], class_names=None, input_size=None,
                  weights_path=None) -> Performer:
    """AlexNet (Krizhevsky et al. 2012) at 227 x 227: relu4 is 13 x 13 x 384, pool5 6 x 6 x 256."""
    names = resolve_class_names(num_classes, class_names)
    model = classic_model("alexnet", square(input_size or 227), ALEXNET_BLOCKS, 4096,
                          len(names), dropout=0.5)
    return classic_performer(model, names, subtract_imagenet_mean, weights_path)
