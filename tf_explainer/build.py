"""Builds an explainer for a performer and initialises its statistics (docs/method.md)."""

import functools

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_explainer.explainer import Explainer
from tf_explainer.layers import SIGMA_FLOOR
from tf_explainer.progress import cardinality, logged
from tf_explainer.performers.spec import Performer, find_layer


def build_explainer(performer: Performer, **options) -> Explainer:
    """An explainer shaped and initialised from `performer`.

    conv-interp-1 takes the top conv's kernel (when its shape fits), conv-interp-2 and conv-ordin
    output as many channels as the performer's pool (or top conv), the pooling layer is copied,
    and each decoder layer starts from the performer's Dense layer it reconstructs.
    `options` are Explainer keyword arguments (pool_position, filter_loss, eta, ...).
    """
    top = find_layer(performer.model, performer.top_conv_layer) if performer.top_conv_layer else None
    target_channels = performer.target_shape[-1]
    interp_filters = int(top.filters) if top is not None else target_channels
    kernel_size = int(top.kernel_size[0]) if top is not None else 3
    pool = None
    part_filters = interp_filters
    if performer.pool_layer:
        pool_layer = find_layer(performer.model, performer.pool_layer)
        pool = keras.layers.serialize(pool_layer)
        part_filters = int(pool_layer.output.shape[-1])
    class_names = list(performer.class_names)
    options.setdefault("negative_class",
                       class_names.index("background") if "background" in class_names else None)
    explainer = Explainer(
        target_shape=performer.target_shape, reconstruct_dims=performer.reconstruct_dims,
        head=performer.head(), interp_filters=interp_filters, part_filters=part_filters,
        kernel_size=kernel_size, pool=pool, decoder_activations=performer.decoder_activations,
        scores_are_logits=performer.scores_are_logits, **options)
    if top is not None:
        _copy_if_fits(top, explainer.conv_interp_1)
    copied = [source is not None and _copy_if_fits(find_layer(performer.model, source), dense)
              for dense, source in zip(explainer.decoder, performer.decoder_init_layers)]
    # Read by initialize_statistics: only a copied fc-dec-1 gets the pool scale folded in.
    explainer.decoder_copied_from_performer = copied
    explainer.attach_performer(performer.taps())
    return explainer


def _copy_if_fits(source, target):
    weights = source.get_weights()
    if [w.shape for w in weights] == [w.shape for w in target.get_weights()]:
        target.set_weights(weights)
        return True
    logging.warning("Not initialising %s from %s: weight shapes %s vs %s differ.", target.name,
                    source.name, [w.shape for w in weights], [w.shape for w in target.get_weights()])
    return False


def _fold_pool_scale(dense, channel_means):
    """Scales fc-dec-1's kernel rows by the performer's pool channel means.

    The decoder reads normalised features (channel mean ~1) while the fc6 it copies expects the
    performer's pool output; folding the pool's channel means into the kernel makes the copied
    layer see inputs at the scale it was trained on.
    """
    kernel, bias = dense.get_weights()
    channels = channel_means.shape[0]
    scale = np.tile(np.maximum(channel_means, 0.0), kernel.shape[0] // channels)
    dense.set_weights([kernel * scale[:, None].astype(kernel.dtype), bias])


def _batch_sums(explainer, data):
    """Sums over one batch of what initialize_statistics averages."""
    k = explainer.num_classes
    batch = explainer.features(data)
    categories = explainer.image_categories(batch)
    outputs = explainer(batch["target"], training=False)
    sums = {f"recon_{i}": tf.reduce_sum(tf.square(tf.cast(batch[f"recon_{i}"], tf.float32)))
            for i in range(len(explainer.reconstruct_dims))}
    sums["count"] = tf.cast(tf.shape(batch["target"])[0], tf.float32)
    for name, key in (("peak_1", "interp_1"), ("peak_2", "part_maps")):
        peaks = tf.reduce_max(tf.cast(outputs[key], tf.float32), axis=[1, 2])
        sums[name], sums["class_count"] = explainer.class_sums(peaks, categories, k)
    for name, key in (("mean_interp", "pre_norm_interp"), ("mean_ordin", "pre_norm_ordin")):
        means = tf.reduce_mean(tf.cast(outputs[key], tf.float32), axis=[1, 2])
        sums[name], _ = explainer.class_sums(means, categories, k)
    if "pool" in batch:
        sums["performer_pool"] = tf.reduce_sum(
            tf.reduce_mean(tf.cast(batch["pool"], tf.float32), axis=[1, 2]), axis=0)
    return sums


def initialize_statistics(explainer: Explainer, dataset, steps=None):
    """One pass over training data with the frozen performer and the initial explainer.

    Sets lambda_l = 1 / E||y*_l||^2, the filter-to-category scores S (class means of each
    filter's peak), and both tracks' norm statistics (positive images only when asked). When
    fc-dec-1 was copied from the performer and the batches carry its pool output, folds the pool's
    channel means into fc-dec-1 (see _fold_pool_scale). Returns the statistics as numpy arrays.
    """
    k = explainer.num_classes
    # A partial per call: TensorFlow counts retracing per traced Python function, so one shared
    # function would be reported as retracing when the demo initialises several explainers;
    # reduce_retracing lets a last, smaller batch reuse the trace.
    batch_sums = tf.function(functools.partial(_batch_sums, explainer), reduce_retracing=True)

    totals = None
    if steps is not None:
        dataset = dataset.take(steps)
    for data in logged(dataset, "Explainer statistics", cardinality(dataset)):
        sums = {name: value.numpy() for name, value in batch_sums(data).items()}
        totals = sums if totals is None else {n: totals[n] + sums[n] for n in totals}
    if totals is None:
        raise ValueError("initialize_statistics got an empty dataset.")

    weights = [1.0 / max(totals[f"recon_{i}"] / totals["count"], 1e-12)
               for i in range(len(explainer.reconstruct_dims))]
    explainer.reconstruction_weights.assign(np.asarray(weights, np.float32))
    class_count = np.maximum(totals["class_count"], 1.0)
    explainer.assignment_1.assign(totals["peak_1"] / class_count)
    explainer.assignment_2.assign(totals["peak_2"] / class_count)

    categories_2 = explainer.filter_categories()[1].numpy()
    keep = np.ones(k, bool)
    if explainer.negative_class is not None:
        keep[explainer.negative_class] = False
    if explainer.norm_positives_only:
        interp_rows = np.eye(k, dtype=bool)[categories_2]  # each filter's own category
        ordin_rows = np.broadcast_to(keep, (explainer.part_filters, k))
    else:
        interp_rows = ordin_rows = np.ones((explainer.part_filters, k), bool)
    for norm, name, rows in ((explainer.norm_interp, "mean_interp", interp_rows),
                             (explainer.norm_ordin, "mean_ordin", ordin_rows)):
        total = np.where(rows, totals[name], 0.0).sum(1)
        count = np.where(rows, totals["class_count"][None, :], 0.0).sum(1)
        sigma = np.where(count > 0, total / np.maximum(count, 1.0), 1.0)
        norm.sigma.assign(np.maximum(sigma, SIGMA_FLOOR).astype(np.float32))
    if "performer_pool" in totals and getattr(explainer, "decoder_copied_from_performer", [False])[0]:
        _fold_pool_scale(explainer.decoder[0], totals["performer_pool"] / totals["count"])
    return {"reconstruction_weights": np.asarray(weights), "sigma_interp": explainer.norm_interp.sigma.numpy(),
            "sigma_ordin": explainer.norm_ordin.sigma.numpy(), "class_count": totals["class_count"]}
