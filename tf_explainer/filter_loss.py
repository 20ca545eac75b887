"""Filter losses that make a conv filter respond to one part (docs/method.md), as pluggable callables.

A filter loss is any callable `loss(maps, positive, mask, centres=None) -> scalar` where
- maps: float [B, h, w, C], the tensor the loss is put on (this replica's batch);
- positive: float [B, C], 1 where image b is of filter c's category, else 0;
- mask: the `PartMask` whose template form, centre rule and sharpness the loss uses;
- centres: optional [B, C, 2] template centres (default: the mask's centre rule on `maps`).
It returns this replica's share of a batch-mean loss: summed over replicas it is the global
batch's loss, so the summed gradients are the global gradient. The explainer multiplies it by
lambda * kappa_t (`filter_loss_scale`). Register new losses with `register_filter_loss(name)`.
"""


import tensorflow as tf

from tf_explainer import templates
from tf_explainer.distribute import global_batch, global_batch_size, num_replicas

# The authors' gradient scale kappa_0 for a loss summed over the batch (their logistic loss); the
# explainer divides it by the 1-based epoch t and multiplies it by lambda.
KAPPA_0 = 1e-6
# Temperature a of the strengths s = mean(x * T): 0.5 in the authors' code; the paper's
# <x, T> = tau n^2 mean(x * T) with tau = 0.5 / n^2 is mean(x * T) / 2, i.e. a = 2.
TEMPERATURES = {"official": 0.5, "paper": 2.0}


def filter_loss_scale(filter_loss_weight, epoch):
    """lambda * kappa_0 / t, the factor on the filter losses at 1-based epoch t."""
    return filter_loss_weight * KAPPA_0 / tf.cast(epoch, tf.float32)


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
def exact_mutual_information(maps, positive=None, mask=None, centres=None):
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


def normalised_weights(strength, z_strength, members, temperature):
    """Per-image weights g = exp(s/a) (s - a log Z + a), each divided by its signed mean over
    the member images of its channel (global batch); non-members get 0.

    strength: [B, C] the images' own strengths s; z_strength: [B, C] the strengths whose
    exp(./a) averaged over **all** batch images gives Z (as the authors compute it); members:
    [B, C] 0/1. Every exponent is shifted by the channel's largest s/a, a factor the signed-mean
    normalisation cancels, so nothing overflows; only a mean within 1e-12 of 0 is guarded.
    """
    a = temperature
    all_s, all_z, all_members = global_batch(strength), global_batch(z_strength), global_batch(members)
    count = tf.reduce_sum(all_members, axis=0)
    log_z = (tf.reduce_logsumexp(all_z / a, axis=0)
             - tf.math.log(tf.cast(tf.shape(all_z)[0], tf.float32)))
    shift = tf.stop_gradient(tf.reduce_max(all_s / a, axis=0))

    def weight(s, m):
        return m * tf.exp(tf.where(m > 0, s / a - shift, 0.0)) * (s - a * log_z + a)

    mean = tf.reduce_sum(weight(all_s, all_members), axis=0) / tf.maximum(count, 1.0)
    guarded = tf.where(tf.abs(mean) < 1e-12, tf.where(mean < 0, -1e-12, 1e-12), mean)
    return weight(strength, members) / guarded


@register_filter_loss("approximate")
def approximate_filter_loss(maps, positive, mask, centres=None):
    """The authors' training gradient (only each image's target template counts).

    Positives: dL/dx = -g_hat * T (T the unit template at the centre, unclamped): raises
    activations on the part, lowers them away from it. Negatives: dL/dx = +g-_hat everywhere,
    with s- = mean(-x) (the constant -1 template). Both divided by the global batch size (a
    batch-mean loss). log Z+ is over all batch images; with form="official" it uses the mask
    array reversed along the batch and channel axes, exactly as the authors' code does (within
    each replica's batch); the paper form pairs each image with its own template. The returned
    value is a readout (mean of -s over positives plus mean activation over negatives); its
    gradient is the custom one above.
    """
    x = tf.cast(maps, tf.float32)
    template = tf.stop_gradient(mask.template(x, centres))
    pos = tf.cast(positive, tf.float32)
    neg = 1.0 - pos
    temperature = TEMPERATURES[mask.form]
    batch_size = global_batch_size(tf.shape(x)[0])

    @tf.custom_gradient
    def loss(x):
        s_pos = tf.reduce_mean(x * template, axis=[1, 2])
        s_neg = -tf.reduce_mean(x, axis=[1, 2])
        if mask.form == "official":
            s_z = tf.reduce_mean(x * template[::-1, :, :, ::-1], axis=[1, 2])
        else:
            s_z = s_pos
        g_pos = normalised_weights(s_pos, s_z, pos, temperature)
        g_neg = normalised_weights(s_neg, s_neg, neg, temperature)
        value = tf.reduce_sum(-s_neg * neg - s_pos * pos) / batch_size

        def grad(upstream):
            # Scale the per-image weights first: two full-size ops instead of four.
            scale = upstream / batch_size
            return (scale * g_neg)[:, None, None, :] - (scale * g_pos)[:, None, None, :] * template

        return value, grad

    return loss(x)


@register_filter_loss("none")
def no_filter_loss(maps, positive=None, mask=None, centres=None):
    """No interpretability loss: the explainer becomes a plain auto-encoder of the performer."""
    return tf.zeros([], tf.float32)
