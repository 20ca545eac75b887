"""Filter losses that make a conv filter respond to one part (SPEC 2.4), as pluggable callables.

A filter loss is any callable `loss(maps, positive, mask) -> scalar` where
- maps: float [B, h, w, C], post-ReLU activations of the filters (this replica's batch);
- positive: float [B, C], 1 where image b is of filter c's category, else 0;
- mask: the `PartMask` whose templates (form, centre rule, sharpness) the loss uses.
It returns this replica's share of the batch loss: summing the shares over replicas gives the
loss of the global batch, so the summed gradients are the global gradient (SPEC 6.2).
Register new ones with `register_filter_loss(name)`; the explainer takes a name or a callable.
"""

import math

import tensorflow as tf

from tf_explainer import templates
from tf_explainer.distribute import global_batch, global_batch_size, num_replicas

_REGISTRY = {}


def register_filter_loss(name):
    def decorator(fn):
        _REGISTRY[name] = fn
        return fn
    return decorator


def get_filter_loss(name_or_callable):
    """A registered loss by name, or the callable itself."""
    if callable(name_or_callable):
        return name_or_callable
    if name_or_callable not in _REGISTRY:
        raise ValueError(f"Unknown filter loss {name_or_callable!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name_or_callable]


def registered_filter_losses():
    return sorted(_REGISTRY)


def _compute_dtype(maps):
    return tf.float64 if maps.dtype == tf.float64 else tf.float32


@register_filter_loss("exact")
def exact_mutual_information(maps, positive=None, mask=None):
    """-MI(X; T) summed over filters, X = this replica's batch, T = the n^2 + 1 paper templates.

    p(x|T) = exp(<x,T>) / Z_T with Z_T over the batch; priors uniform 1/(n^2+1). All <x,T> come
    from one matmul of the flattened maps (B*C, n^2) with the template bank (n^2, n^2+1); every
    step stays in log space, so no activation can overflow it. Labels are not used.
    """
    dtype = _compute_dtype(maps)
    x = tf.cast(maps, dtype)
    batch, h, w, channels = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, h * w])
    bank = templates.template_bank(h, w, dtype)
    num_templates = h * w + 1
    logits = tf.reshape(tf.matmul(flat, bank), [batch, channels, num_templates])
    log_px_given_t = logits - tf.reduce_logsumexp(logits, axis=0, keepdims=True)
    log_prior = -tf.math.log(tf.cast(num_templates, dtype))
    log_px = tf.reduce_logsumexp(log_prior + log_px_given_t, axis=2, keepdims=True)
    mi = tf.exp(log_prior) * tf.reduce_sum(
        tf.exp(log_px_given_t) * (log_px_given_t - log_px), axis=[0, 2])
    return -tf.reduce_sum(mi) / num_replicas()


def target_weights(strength, members, temperature):
    """Per-image weights g = exp(s/a) (s - a log Z + a) of the approximate gradient.

    Z is the mean of exp(s/a) over the member images of each channel in the global batch, so
    exp(s/a - log Z) <= batch size and nothing overflows. g is divided by its mean magnitude over
    the members (the mean itself can be ~0 or negative, which would flip or blow up the step);
    non-members get 0. strength, members: float32 [B, C].
    """
    a = temperature
    all_s, all_members = global_batch(strength), global_batch(members)
    count = tf.reduce_sum(all_members, axis=0)
    scaled = tf.where(all_members > 0, all_s / a, tf.fill(tf.shape(all_s), -math.inf))
    log_z = tf.reduce_logsumexp(scaled, axis=0) - tf.math.log(tf.maximum(count, 1.0))
    log_z = tf.where(count > 0, log_z, 0.0)

    def weight(s, m):
        exponent = tf.where(m > 0, s / a - log_z, 0.0)
        return m * tf.exp(exponent) * (s - a * log_z + a)

    norm = tf.reduce_sum(tf.abs(weight(all_s, all_members)), axis=0) / tf.maximum(count, 1.0)
    return weight(strength, members) / tf.maximum(norm, 1e-12)


def _approximate(maps, positive, mask, temperature, negative_sign):
    """Approximate filter loss: only each image's target template T_hat contributes.

    Positives: gradient -g * m (m the unit template at the peak, unclamped), raising activations
    on the part and lowering them away from it. Negatives: gradient +g everywhere, lowering all
    activations; negative_sign is the sign of the negative template in the strength s-. The
    returned value is a readout (mean negative activation minus mean positive strength); its
    gradient is the custom one.
    """
    x = tf.cast(maps, tf.float32)
    m = tf.stop_gradient(mask.template(x))
    pos = tf.cast(positive, tf.float32)
    neg = 1.0 - pos
    batch_size = global_batch_size(tf.shape(x)[0])

    @tf.custom_gradient
    def loss(x):
        s_pos = tf.reduce_mean(x * m, axis=[1, 2])
        s_neg = negative_sign * tf.reduce_mean(x, axis=[1, 2])
        g_pos = target_weights(s_pos, pos, temperature)
        g_neg = target_weights(s_neg, neg, temperature)
        value = tf.reduce_sum(negative_sign * s_neg * neg - s_pos * pos) / batch_size

        def grad(upstream):
            # Scale the per-image weights first: two full-size ops instead of four.
            scale = upstream / batch_size
            return (scale * g_neg)[:, None, None, :] - (scale * g_pos)[:, None, None, :] * m

        return value, grad

    return loss(x)


@register_filter_loss("approximate")
def approximate_filter_loss(maps, positive, mask):
    """The authors' training gradient, in the form of `mask` (SPEC 2.4).

    official: temperature a = 0.5 on s = mean(x * m), negatives s- = mean(x).
    paper: <x, T> = tau * n^2 * mean(x * m) = mean(x * m) / 2, i.e. temperature 2, and the
    negative template -tau gives s- = -mean(x).
    """
    if mask.form == "official":
        return _approximate(maps, positive, mask, temperature=0.5, negative_sign=1.0)
    return _approximate(maps, positive, mask, temperature=2.0, negative_sign=-1.0)


@register_filter_loss("none")
def no_filter_loss(maps, positive=None, mask=None):
    """No interpretability loss: the explainer becomes a plain auto-encoder of the performer."""
    return tf.zeros([], tf.float32)
