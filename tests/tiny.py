"""A tiny random performer and data for fast tests (32x32 input, 8x8 target map)."""

import keras
import numpy as np
import tensorflow as tf

from tf_explainer.performers.spec import Performer


def tiny_performer(num_classes=3, seed=0, class_names=None):
    keras.utils.set_random_seed(seed)
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(image)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", name="conv4")(x)
    x = keras.layers.ReLU(name="relu4")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv5")(x)
    x = keras.layers.ReLU(name="relu5")(x)
    x = keras.layers.MaxPooling2D(2, name="pool5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(24, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(20, activation="relu", name="fc7")(x)
    scores = keras.layers.Dense(num_classes, name="fc8")(x)
    model = keras.Model(image, scores, name="tiny")
    names = class_names or [f"class_{i}" for i in range(num_classes)]
    return Performer(model=model, target_layer="relu4", reconstruct_layers=["fc6", "fc7"],
                     head_layers=["fc8"], class_names=names, preprocess=lambda x: x / 255.0,
                     input_size=(32, 32), top_conv_layer="conv5", pool_layer="pool5",
                     top_conv_output_layer="relu5")


def image_batches(num_batches=4, batch_size=8, num_classes=3, seed=0):
    """A repeatable dataset of {"image", "label"} batches with a class-dependent blob."""
    rng = np.random.default_rng(seed)
    n = num_batches * batch_size
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = rng.integers(4, 24, 2)
        images[i, r:r + 6, c:c + 6, label % 3] += 2.0
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(batch_size)
