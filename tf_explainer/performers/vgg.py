"""VGG-M and VGG-S (Chatfield et al. 2014, "Return of the devil") and VGG-16.

VGG-M/VGG-S follow the MatConvNet models the official code uses, paddings included (checked by
their receptive fields: VGG-M s=16 c=18, VGG-S s=12 c=21). VGG-16 has the keras.applications
layer layout, so its ImageNet weights load from the local keras-applications .h5 file.
"""

import keras
import tensorflow as tf

from tf_explainer.performers.alexnet import (ConvBlock, classic_model, classic_performer, square,
                                             subtract_imagenet_mean)
from tf_explainer.performers.keras_model import load_weights, resolve_class_names
from tf_explainer.performers.spec import Performer

_PAD_AFTER_1 = ((0, 1), (0, 1))

VGG_M_BLOCKS = (
    ConvBlock(96, 7, 2, "valid", norm=True, pool=3, pool_stride=2, pool_padding=_PAD_AFTER_1),
    ConvBlock(256, 5, 2, 1, norm=True, pool=3, pool_stride=2, pool_padding=_PAD_AFTER_1),
    ConvBlock(512, 3),
    ConvBlock(512, 3),
    ConvBlock(512, 3, pool=3, pool_stride=2),
)

VGG_S_BLOCKS = (
    ConvBlock(96, 7, 2, "valid", norm=True, pool=3, pool_stride=3,
              pool_padding=((0, 2), (0, 2))),
    ConvBlock(256, 5, 1, "valid", pool=2, pool_stride=2, pool_padding=_PAD_AFTER_1),
    ConvBlock(512, 3),
    ConvBlock(512, 3),
    ConvBlock(512, 3, pool=3, pool_stride=3, pool_padding=_PAD_AFTER_1),
)

VGG16_CONV_LAYERS = [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
                     for c in range(1, n + 1)]
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_CLASSES = 1000


def build_vgg_m(num_classes, class_names=None, input_size=None, weights_path=None) -> Performer:
    """VGG-M at 224 x 224: relu4 is 13 x 13 x 512, pool5 6 x 6 x 512."""
    names = resolve_class_names(num_classes, class_names)
    model = classic_model("vgg_m", square(input_size or 224), VGG_M_BLOCKS, 4096, len(names),
                          dropout=0.5)
    return classic_performer(model, names, subtract_imagenet_mean, weights_path)


def build_vgg_s(num_classes, class_names=None, input_size=None, weights_path=None) -> Performer:
    """VGG-S at 224 x 224: relu4 is 17 x 17 x 512, pool5 6 x 6 x 512."""
    names = resolve_class_names(num_classes, class_names)
    model = classic_model("vgg_s", square(input_size or 224), VGG_S_BLOCKS, 4096, len(names),
                          dropout=0.5)
    return classic_performer(model, names, subtract_imagenet_mean, weights_path)


def caffe_preprocess(images):
    """keras.applications.vgg16.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet mean."""
    bgr = tf.reverse(tf.cast(images, tf.float32), axis=[-1])
    return bgr - tf.constant(_CAFFE_MEAN_BGR, tf.float32)


def build_vgg16(num_classes, class_names=None, input_size=None, weights_path=None) -> Performer:
    """VGG-16 in the keras.applications layout plus a new fc8 head; target block5_conv2 (relu5_2).

    weights_path: a Keras 3 weights file of this model, or a keras-applications VGG16 .h5 file
    (with top: fc1/fc2 = fc6/fc7 come from it too; _notop: fc layers stay random). The new head
    is fc8, except for 1000 classes where it is "predictions" so that it loads the file's
    ImageNet classifier (as logits). Conv layers have their ReLU built in, so block5_conv2 is
    relu5_2 and block5_conv3 is both the top conv and its post-ReLU output.
    """
    names = resolve_class_names(num_classes, class_names)
    height, width = square(input_size or 224)
    base = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(height, width, 3))
    x = keras.layers.Flatten(name="flatten")(base.output)
    x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
    head = "predictions" if len(names) == _IMAGENET_CLASSES else "fc8"
    scores = keras.layers.Dense(len(names), dtype="float32", name=head)(x)
    model = keras.Model(base.inputs, scores, name="vgg16")
    if weights_path is not None:
        load_weights(model, weights_path, required_layers=VGG16_CONV_LAYERS)
    return Performer(
        model=model, target_layer="block5_conv2", reconstruct_layers=["fc1", "fc2"],
        head_layers=[head], class_names=names, preprocess=caffe_preprocess,
        input_size=(height, width), top_conv_layer="block5_conv3", pool_layer="block5_pool",
        top_conv_output_layer="block5_conv3", scores_are_logits=True)
