"""The embedded default performer: a small VGG-style net that trains on 2 CPU cores in minutes.

64 x 64 input; relu4 (the target) is 16 x 16 x 64 with stride 4, so parts of a creature land
on distinct cells; the layer names match AlexNet/VGG-M/VGG-S so the same explainer code applies.
"""

import tensorflow as tf

from tf_explainer.performers.alexnet import ConvBlock, classic_model, classic_performer, square
from tf_explainer.performers.keras_model import resolve_class_names
from tf_explainer.performers.spec import Performer

SMALL_VGG_BLOCKS = (
    ConvBlock(32, 3, pool=2),
    ConvBlock(64, 3, pool=2),
    ConvBlock(64, 3),
    ConvBlock(64, 3),
    ConvBlock(64, 3, pool=2),
)


def scale_to_unit_range(images):
    """[0, 255] RGB -> [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def build_small_vgg(num_classes, class_names=None, input_size=None,
                    weights_path=None) -> Performer:
    """conv1(32)-pool1-conv2(64)-pool2-conv3/4/5(64)-pool5 (8 x 8) -> fc6/fc7 (256) -> fc8."""
    names = resolve_class_names(num_classes, class_names)
    model = classic_model("small_vgg", square(input_size or 64), SMALL_VGG_BLOCKS, 256,
                          len(names), dropout=0.3)
    return classic_performer(model, names, scale_to_unit_range, weights_path)
