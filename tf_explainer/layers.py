"""The explainer's custom layers (docs/method.md). Each stores its constructor arguments in get_config."""

import keras
import tensorflow as tf

from tf_explainer import templates
from tf_explainer.distribute import global_sum

CENTRES = ("argmax", "centroid")


def _grid(x):
    return int(x.shape[1]), int(x.shape[2])


@keras.saving.register_keras_serializable(package="tf_explainer")
class PartMask(keras.layers.Layer):
    """Keeps each channel's activations near its own part: x * max(T_mu_hat, 0) (docs/method.md).

    The mask is a constant in back-propagation, so the gradient is upstream * max(T, 0) (the
    authors' backward; plain autograd of max(x * T, 0) would give T where x = 0). The centre is
    the peak ("argmax") or, as in the authors' code, the activation-weighted centroid rounded to
    the nearest cell ("centroid"). With form="official" the layer owns a per-channel sharpness
    a_d (init 2) that training pulls toward clip(3 / spread_d, 1.5, 3), spread_d the
    strength-weighted mean RMS distance (in cells) of positive images' activations from their
    centre, by a_d += sharpness_rate * (target - a_d) each step.
    """

    def __init__(self, form="paper", centre="argmax", sharpness_init=2.0, sharpness_rate=1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        if form not in templates.FORMS:
            raise ValueError(f"form must be one of {templates.FORMS}, got {form!r}.")
        if centre not in CENTRES:
            raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}.")
        self.form = form
        self.centre = centre
        self.sharpness_init = float(sharpness_init)
        self.sharpness_rate = float(sharpness_rate)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.sharpness = None
        if self.form == "official":
            self.sharpness = self.add_weight(
                name="sharpness", shape=(channels,), trainable=False, aggregation="mean",
                initializer=keras.initializers.Constant(self.sharpness_init))

    def centres(self, x):
        """Centre mu_hat of each channel, float [B, C, 2] as (row, col) whole cells."""
        x = tf.cast(x, tf.float32)
        h, w = _grid(x)
        if self.centre == "argmax":
            flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [tf.shape(x)[0], x.shape[3], h * w])
            index = tf.argmax(flat, axis=-1, output_type=tf.int32)
            return tf.cast(tf.stack([index // w, index % w], axis=-1), tf.float32)
        # Rounded half away from zero (MATLAB's round; the centroid is >= 0, so floor(v + 0.5)).
        # An all-zero map has centroid 0: cell (0, 0), as in the authors' code.
        return tf.floor(_centroid(x) + 0.5)

    def template(self, x, centres=None):
        """The unit template (floor -1) at each channel's centre, float32 like x's shape."""
        centres = self.centres(x) if centres is None else centres
        return templates.unit_template(centres, _grid(x), self.form, self.sharpness)

    def call(self, x, positive=None, training=None):
        centres = self.centres(x)
        mask = templates.unit_template(centres, _grid(x), self.form, self.sharpness, floor=0.0)
        if training and self.sharpness is not None and positive is not None:
            target, count = self.sharpness_target(x, centres, positive)
            self.sharpness.assign(tf.where(
                count > 0, self.sharpness + self.sharpness_rate * (target - self.sharpness),
                self.sharpness))
        return x * tf.cast(tf.stop_gradient(mask), x.dtype)

    def sharpness_target(self, x, centres, positive):
        """(clip(3 / spread_bar_d, 1.5, 3) [C], positive images counted [C]) over the global batch.

        spread_bar_d = sum_b s_bd spread_bd / sum_b s_bd over positive images, s = mean(x * T).
        """
        x = tf.stop_gradient(tf.cast(x, tf.float32))
        strength = tf.reduce_mean(x * self.template(x, centres), axis=[1, 2])  # [B, C]
        weight = strength * tf.cast(positive, tf.float32)
        total, weight_sum, count = global_sum(
            tf.reduce_sum(weight * spread(x, centres), 0), tf.reduce_sum(weight, 0),
            tf.reduce_sum(tf.cast(positive, tf.float32), 0))
        spread_bar = total / tf.where(tf.abs(weight_sum) > 0, weight_sum, 1.0)
        target = tf.clip_by_value(3.0 / tf.maximum(spread_bar, 1e-12), 1.5, 3.0)
        return target, tf.where(tf.abs(weight_sum) > 0, count, 0.0)

    def sharpness_pseudo_gradient(self, x, positive):
        """The authors' gradient for a_d, -1e4 (target - a_d) (SGD with lr multiplier 0.05 on it
        is what `sharpness_rate` stands in for under any optimizer)."""
        target, _ = self.sharpness_target(x, self.centres(x), positive)
        return -1e4 * (target - self.sharpness)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "form": self.form, "centre": self.centre,
                "sharpness_init": self.sharpness_init, "sharpness_rate": self.sharpness_rate}


def _centroid(x):
    """Activation-weighted centroid (row, col) in 0-based cells [B, C, 2]; 0 for an all-zero map."""
    h, w = _grid(x)
    rows = tf.range(h, dtype=tf.float32)[None, :, None, None]
    cols = tf.range(w, dtype=tf.float32)[None, None, :, None]
    total = tf.maximum(tf.reduce_sum(x, axis=[1, 2]), 1e-9)
    return tf.stack([tf.reduce_sum(x * rows, axis=[1, 2]) / total,
                     tf.reduce_sum(x * cols, axis=[1, 2]) / total], axis=-1)


def spread(x, centres):
    """RMS distance in cells of each map's activation from its centre [B, C]:
    sqrt(sum x ((i - mu_i)^2 + (j - mu_j)^2) / max(sum x, 1e-9))."""
    x = tf.cast(x, tf.float32)
    h, w = _grid(x)
    rows = tf.range(h, dtype=tf.float32)[None, :, None, None]
    cols = tf.range(w, dtype=tf.float32)[None, None, :, None]
    squared = (tf.square(rows - centres[:, None, None, :, 0])
               + tf.square(cols - centres[:, None, None, :, 1]))
    total = tf.maximum(tf.reduce_sum(x, axis=[1, 2]), 1e-9)
    return tf.sqrt(tf.reduce_sum(x * squared, axis=[1, 2]) / total)


# The smallest sigma a gradient step may leave: an optimizer step can otherwise take a small
# sigma of a nearly silent channel through zero, which flips and explodes its normalised output.
SIGMA_FLOOR = 1e-3


@keras.saving.register_keras_serializable(package="tf_explainer")
class AtLeast(keras.constraints.Constraint):
    """Clips a weight from below after each optimizer step."""

    def __init__(self, floor):
        self.floor = float(floor)

    def __call__(self, w):
        return tf.maximum(w, self.floor)

    def get_config(self):
        return {"floor": self.floor}


@keras.saving.register_keras_serializable(package="tf_explainer")
class ChannelNorm(keras.layers.Layer):
    """x / (sigma_d + eps), sigma_d the mean activation of channel d over images (docs/method.md).

    sigma is learned two ways at once, as the paper describes: it is a trainable weight, so the
    optimizer moves it with the reconstruction gradient, and after each training call it is
    pulled toward the batch statistic, sigma <- m sigma + (1 - m) batch (the running statistic;
    with learning rate lr this is the paper's K (sigma - batch) term with K = (1 - m) / lr). The
    statistic is read before the update, so a step normalises with the value it started with.
    When `positives_only`, only images marked positive for a channel count. `learn_sigma=False`
    keeps the pure moving average.
    """

    def __init__(self, momentum=0.9, epsilon=1e-6, positives_only=False, learn_sigma=True, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.positives_only = bool(positives_only)
        self.learn_sigma = bool(learn_sigma)

    def build(self, input_shape):
        self.sigma = self.add_weight(name="sigma", shape=(int(input_shape[-1]),),
                                     trainable=self.learn_sigma, aggregation="mean",
                                     initializer="ones", constraint=AtLeast(SIGMA_FLOOR))

    def batch_sums(self, x, positive=None):
        """Per-channel (sum of image means, image count) for this replica's batch."""
        image_means = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])  # [B, C]
        weight = tf.ones_like(image_means)
        if self.positives_only and positive is not None:
            weight = weight * tf.cast(positive, tf.float32)
        return tf.reduce_sum(image_means * weight, 0), tf.reduce_sum(weight, 0)

    def normalise(self, x, sigma):
        return x / tf.cast(sigma + self.epsilon, x.dtype)

    def call(self, x, positive=None, training=None):
        sigma = tf.convert_to_tensor(self.sigma)
        if training:
            total, count = global_sum(*self.batch_sums(tf.stop_gradient(x), positive))
            batch = total / tf.maximum(count, 1.0)
            m = self.momentum
            self.sigma.assign(tf.where(count > 0, m * tf.stop_gradient(sigma) + (1 - m) * batch,
                                       tf.stop_gradient(sigma)))
        return self.normalise(x, sigma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "positives_only": self.positives_only, "learn_sigma": self.learn_sigma}


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
