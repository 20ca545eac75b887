"""The explainer's custom layers (SPEC 2.2). Each stores its constructor arguments in get_config."""

import keras
import tensorflow as tf

from tf_explainer import templates
from tf_explainer.distribute import global_sum

CENTRES = ("argmax", "centroid")


def _grid(x):
    return int(x.shape[1]), int(x.shape[2])


@keras.saving.register_keras_serializable(package="tf_explainer")
class PartMask(keras.layers.Layer):
    """Keeps each channel's activations near its own peak: x * max(T_mu_hat, 0).

    The mask is a constant in back-propagation, so the gradient is the upstream gradient times the
    mask. With form="official" the layer owns a per-channel sharpness a_d (init 2), pulled in
    training toward clip(3 / spread_d, 1.5, 3), spread_d being the mean activation-weighted L1
    distance of positive images' activations from their peak.
    """

    def __init__(self, form="paper", centre="argmax", sharpness_init=2.0,
                 sharpness_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if form not in templates.FORMS:
            raise ValueError(f"form must be one of {templates.FORMS}, got {form!r}.")
        if centre not in CENTRES:
            raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}.")
        self.form = form
        self.centre = centre
        self.sharpness_init = float(sharpness_init)
        self.sharpness_momentum = float(sharpness_momentum)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.sharpness = None
        if self.form == "official":
            self.sharpness = self.add_weight(
                name="sharpness", shape=(channels,), trainable=False, aggregation="mean",
                initializer=keras.initializers.Constant(self.sharpness_init))

    def centres(self, x):
        """Peak position mu_hat of each channel, float [B, C, 2] as (row, col) in cells."""
        x = tf.cast(x, tf.float32)
        h, w = _grid(x)
        flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [tf.shape(x)[0], x.shape[3], h * w])
        index = tf.argmax(flat, axis=-1, output_type=tf.int32)
        argmax = tf.cast(tf.stack([index // w, index % w], axis=-1), tf.float32)
        if self.centre == "argmax":
            return argmax
        rows = tf.range(h, dtype=tf.float32)[None, :, None, None]
        cols = tf.range(w, dtype=tf.float32)[None, None, :, None]
        total = tf.reduce_sum(x, axis=[1, 2])
        safe = tf.maximum(total, 1e-12)
        centroid = tf.stack([tf.reduce_sum(x * rows, axis=[1, 2]) / safe,
                             tf.reduce_sum(x * cols, axis=[1, 2]) / safe], axis=-1)
        return tf.where((total > 0)[..., None], centroid, argmax)

    def template(self, x):
        """The unclamped unit template at each channel's centre, float32 like x's shape."""
        return templates.unit_template(self.centres(x), _grid(x), self.form, self.sharpness)

    def call(self, x, positive=None, training=None):
        centres = self.centres(x)
        mask = templates.unit_template(centres, _grid(x), self.form, self.sharpness, floor=0.0)
        if training and self.sharpness is not None and positive is not None:
            self._update_sharpness(x, centres, positive)
        return x * tf.cast(tf.stop_gradient(mask), x.dtype)

    def _update_sharpness(self, x, centres, positive):
        x = tf.cast(x, tf.float32)
        dist = tf.stop_gradient(templates.l1_distance(centres, _grid(x), "official"))
        weight = x / tf.maximum(tf.reduce_sum(x, axis=[1, 2], keepdims=True), 1e-12)
        spread = tf.reduce_sum(weight * dist, axis=[1, 2])  # [B, C]
        active = tf.cast(positive, tf.float32) * tf.cast(tf.reduce_sum(x, axis=[1, 2]) > 0, tf.float32)
        total, count = global_sum(tf.reduce_sum(spread * active, 0), tf.reduce_sum(active, 0))
        spread = total / tf.maximum(count, 1.0)
        target = tf.clip_by_value(3.0 / tf.maximum(spread, 1e-6), 1.5, 3.0)
        m = self.sharpness_momentum
        self.sharpness.assign(tf.where(count > 0, m * self.sharpness + (1 - m) * target,
                                       self.sharpness))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "form": self.form, "centre": self.centre,
                "sharpness_init": self.sharpness_init,
                "sharpness_momentum": self.sharpness_momentum}


@keras.saving.register_keras_serializable(package="tf_explainer")
class ChannelNorm(keras.layers.Layer):
    """x / (sigma_d + eps), sigma_d a moving mean of channel d's activation over images.

    sigma is updated only in training (after it is read, so a step normalises with the statistic
    it started with). When `positives_only`, only images marked positive for a channel count, as
    SPEC 2.2 asks for single-category performers.
    """

    def __init__(self, momentum=0.9, epsilon=1e-6, positives_only=False, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.positives_only = bool(positives_only)

    def build(self, input_shape):
        self.sigma = self.add_weight(name="sigma", shape=(int(input_shape[-1]),), trainable=False,
                                     aggregation="mean", initializer="ones")

    def batch_sums(self, x, positive=None):
        """Per-channel (sum of image means, image count) for this replica's batch."""
        image_means = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])  # [B, C]
        weight = tf.ones_like(image_means)
        if self.positives_only and positive is not None:
            weight = weight * tf.cast(positive, tf.float32)
        return tf.reduce_sum(image_means * weight, 0), tf.reduce_sum(weight, 0)

    def call(self, x, positive=None, training=None):
        sigma = tf.identity(self.sigma)
        if training:
            total, count = global_sum(*self.batch_sums(x, positive))
            batch = total / tf.maximum(count, 1.0)
            m = self.momentum
            self.sigma.assign(tf.where(count > 0, m * sigma + (1 - m) * batch, sigma))
        return x / tf.cast(sigma + self.epsilon, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "positives_only": self.positives_only}


@keras.saving.register_keras_serializable(package="tf_explainer")
class TrackFusion(keras.layers.Layer):
    """x_enc = p * x_interp + (1 - p) * x_ordin, p = softmax(s * [w_interp, w_ordin])[0], init 0.5.

    `logit_scale` s acts as a learning-rate multiplier for p under Adam, which moves every weight
    by about lr per step whatever its gradient: with s = 1 and lr = 1e-4, p would need thousands
    of steps to move at all. (Under SGD the effective multiplier is s^2.)
    """

    def __init__(self, logit_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.logit_scale = float(logit_scale)

    def build(self, input_shape):
        self.w_interp = self.add_weight(name="w_interp", shape=(), initializer="zeros")
        self.w_ordin = self.add_weight(name="w_ordin", shape=(), initializer="zeros")

    def _logits(self):
        weights = tf.stack([tf.convert_to_tensor(self.w_interp), tf.convert_to_tensor(self.w_ordin)])
        return self.logit_scale * weights

    def p(self):
        """The interpretable track's share, float32 scalar."""
        return tf.nn.softmax(self._logits())[0]

    def log_p(self):
        return tf.nn.log_softmax(self._logits())[0]

    def call(self, inputs):
        x_interp, x_ordin = inputs
        p = tf.cast(self.p(), x_interp.dtype)
        return p * x_interp + (1 - p) * x_ordin

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "logit_scale": self.logit_scale}
