"""The paper's measurements of an explainer against its performer (docs/method.md).

Streams a dataset once through the performer and the explainer, keeping only each filter's peak
(cell and value) per image, so memory grows with images x filters, not with map sizes.
"""

import dataclasses
import functools
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from tf_explainer.metrics import instability as inst
from tf_explainer.metrics import parts as part_metrics
from tf_explainer.progress import cardinality, logged

# Which maps are measured: key in the collected outputs -> name in the report.
MAPS = {"target": "performer_target", "top": "performer_top", "part_maps": "explainer"}


@dataclasses.dataclass
class Collected:
    """Per-image peaks of each measured map, plus labels, landmarks and predictions."""
    cells: dict
    values: dict
    landmarks: np.ndarray
    labels: np.ndarray
    performer_predictions: np.ndarray
    reconstructed_predictions: np.ndarray
    image_size: tuple


_STEPS = weakref.WeakKeyDictionary()  # explainer -> {(image shape, dtype): traced step}


def _maps_and_predictions(explainer_ref, image):
    explainer = explainer_ref()
    features = explainer.performer_features(image)
    outputs = explainer(features["target"], training=False)
    maps = {"target": features["target"], "part_maps": outputs["part_maps"]}
    if "top" in features:
        maps["top"] = features["top"]
    return (maps, tf.argmax(features["scores"], -1, output_type=tf.int32),
            tf.argmax(outputs["scores"], -1, output_type=tf.int32))


def measured_maps(explainer, image):
    """(maps {"target", "part_maps"[, "top"]}, performer's predicted class, reconstructed class)
    of a batch of preprocessed images.

    One traced step per explainer and image shape, its batch dimension left open so a last,
    smaller batch reuses it, and kept between calls (the TensorBoard probe measures after every
    epoch). TensorFlow keys its retracing statistics by the traced Python function; a partial per
    explainer gives each explainer its own, so evaluating several explainers in a row (the demo's
    ablations) is not reported as retracing. The explainer is held weakly so it can be freed.
    """
    image = tf.convert_to_tensor(image)
    steps = _STEPS.setdefault(explainer, {})
    key = (tuple(image.shape[1:]), image.dtype)
    if key not in steps:
        signature = [tf.TensorSpec([None, *image.shape[1:]], image.dtype)]
        steps[key] = tf.function(functools.partial(_maps_and_predictions, weakref.ref(explainer)),
                                 input_signature=signature)
    return steps[key](image)


def collect(explainer, dataset, steps=None) -> Collected:
    """Runs batches of {"image", "label", "landmarks"} through performer and explainer."""
    parts = {"cells": {}, "values": {}, "landmarks": [], "labels": [], "perf": [], "recon": []}
    image_size = None
    if steps is not None:
        dataset = dataset.take(steps)
    for data in logged(dataset, "Evaluation", cardinality(dataset)):
        image_size = tuple(int(d) for d in data["image"].shape[1:3])
        maps, performer_pred, recon_pred = measured_maps(explainer, data["image"])
        for key, value in maps.items():
            cells, values = inst.map_peaks(value.numpy())
            parts["cells"].setdefault(key, []).append(cells)
            parts["values"].setdefault(key, []).append(values)
        parts["landmarks"].append(data["landmarks"].numpy())
        parts["labels"].append(data["label"].numpy())
        parts["perf"].append(performer_pred.numpy())
        parts["recon"].append(recon_pred.numpy())
    if image_size is None:
        raise ValueError("The evaluation dataset is empty.")
    cat = np.concatenate
    return Collected(
        cells={k: cat(v) for k, v in parts["cells"].items()},
        values={k: cat(v) for k, v in parts["values"].items()},
        landmarks=cat(parts["landmarks"]), labels=cat(parts["labels"]),
        performer_predictions=cat(parts["perf"]), reconstructed_predictions=cat(parts["recon"]),
        image_size=image_size)


def filter_categories(collected: Collected, key, negative_class=None):
    """[F] the category each filter of one collected map is measured on: the one class besides
    the negative one, or (multi-category) the class where the filter's mean peak is highest."""
    values = collected.values[key]
    labels = collected.labels
    classes = [c for c in np.unique(labels) if c != negative_class]
    if len(classes) == 1:
        return np.full(values.shape[1], classes[0])
    ignore = () if negative_class is None else (negative_class,)
    return inst.assign_filters_to_categories(values, labels, int(labels.max()) + 1,
                                             ignore_labels=ignore)


def filter_images(collected: Collected, key, negative_class=None):
    """[N, F] bool: the images each filter is measured on (its category's, filter_categories)."""
    return collected.labels[:, None] == filter_categories(collected, key, negative_class)[None, :]


def peak_xy(collected: Collected, key, geometry):
    """[N, F, 2] each filter's peak per image in input pixels (x, y)."""
    return inst.project_cells(collected.cells[key], geometry.stride, geometry.offset)


def instability(collected: Collected, key, geometry, negative_class=None, top_k=100):
    """Location instability of one collected map (official protocol), as the metric's
    InstabilityResult (mean, per filter, per filter and landmark); filters are measured on
    `filter_images`."""
    eligible = filter_images(collected, key, negative_class)
    return inst.location_instability_on(peak_xy(collected, key, geometry), collected.values[key],
                                        collected.landmarks, collected.image_size, eligible,
                                        top_k=top_k)


def parts(collected: Collected, key, geometry, negative_class=None, top_k=100):
    """Part coverage, duplicates and each filter's part of one collected map (PartResult)."""
    eligible = filter_images(collected, key, negative_class)
    return part_metrics.part_measures(peak_xy(collected, key, geometry), collected.values[key],
                                      collected.landmarks, eligible, collected.image_size, top_k)


def fixed_point_floor(collected: Collected, negative_class=None):
    """Instability of the best fixed pixel, per object category, averaged over categories."""
    classes = [c for c in np.unique(collected.labels) if c != negative_class]
    return float(np.nanmean([part_metrics.fixed_point_instability(
        collected.landmarks[collected.labels == c], collected.image_size) for c in classes]))


def part_contributions(explainer, images, class_index=None):
    """How much each interpretable filter contributes to the class score (the paper's Fig. 5).

    Gradient x activation on the normalised interpretable track: sum_ij x_interp * d score /
    d x_interp through fusion, decoder and the performer's head. class_index: an int, [B] ints, or
    None for the performer's prediction. Returns float32 [B, F] (F = conv-interp-2 filters).
    """
    features = explainer.performer_features(images)
    if class_index is None:
        class_index = tf.argmax(features["scores"], axis=-1, output_type=tf.int32)
    class_index = tf.broadcast_to(tf.cast(class_index, tf.int32), [tf.shape(images)[0]])
    return explain_with_contributions(explainer, features["target"], class_index)[1].numpy()


def explain_with_contributions(explainer, target, class_index):
    """(explainer outputs, part contributions [B, F]) from one forward pass (graph-safe; the
    SavedModel export uses it): the gradient is taken at the pass's own x_interp."""
    with tf.GradientTape() as tape:
        tape.watch(target)
        outputs = explainer(target, training=False)
        chosen = tf.gather(outputs["scores"], class_index, axis=1, batch_dims=1)
    gradient = tape.gradient(chosen, outputs["x_interp"])
    return outputs, tf.reduce_sum(gradient * outputs["x_interp"], axis=[1, 2])


# Part measures are reported for these maps: collected key -> suffix of the metric names.
PART_MAPS = {"part_maps": "", "top": "_top"}


def evaluate(explainer, dataset, geometries, steps=None, top_k=100, landmark_names=None,
             class_names=None) -> dict:
    """`measure` on the peaks `collect` gathers from the dataset."""
    return measure(explainer, collect(explainer, dataset, steps), geometries, top_k,
                   landmark_names, class_names)


def measure(explainer, collected: Collected, geometries, top_k=100, landmark_names=None,
            class_names=None) -> dict:
    """p, performer and reconstructed accuracy, location instability of each measured map, the
    fixed-point floor, and part coverage, duplicates and a per-filter table (explainer and the
    performer's top conv).

    geometries: {"target": ReceptiveField, "top": ..., "part_maps": ...} (stride, offset in
    input pixels); maps without a geometry or without collected peaks are left out.
    landmark_names, class_names: names used in the per-filter table (default: indices). Each
    filter's row: its category, part ("none"), twins, dead flag, instability, and per landmark its
    hit rate, the best fixed pixel's, the mean peak offset (dx, dy) and the distance spread, both
    in input pixels (None where the filter has no image with that landmark).
    """
    performer_accuracy = float(np.mean(collected.performer_predictions == collected.labels))
    reconstructed_accuracy = float(np.mean(collected.reconstructed_predictions == collected.labels))
    result = {
        "num_images": int(collected.labels.shape[0]),
        "p": float(explainer.fusion.p()),
        "performer_accuracy": performer_accuracy,
        "reconstructed_accuracy": reconstructed_accuracy,
        "performer_error": 1.0 - performer_accuracy,
        "reconstructed_error": 1.0 - reconstructed_accuracy,
        "reconstructed_error_increase": performer_accuracy - reconstructed_accuracy,
    }
    stability = {}
    for key, name in MAPS.items():
        if key in collected.cells and key in geometries:
            stability[key] = instability(collected, key, geometries[key],
                                         explainer.negative_class, top_k)
            result[f"instability_{name}"] = float(stability[key].mean)
    result["instability_fixed_point"] = fixed_point_floor(collected, explainer.negative_class)
    k_count = collected.landmarks.shape[1]
    landmark_names = list(landmark_names or [str(k) for k in range(k_count)])
    diagonal = float(np.hypot(*collected.image_size))
    result["filters"] = {}
    for key, suffix in PART_MAPS.items():
        if key not in stability:
            continue
        measured = parts(collected, key, geometries[key], explainer.negative_class, top_k)
        result[f"part_coverage{suffix}"] = measured.coverage
        result[f"duplicate_filters{suffix}"] = measured.duplicates
        result[f"filters_per_part{suffix}"] = measured.filters_per_part(landmark_names)
        categories = filter_categories(collected, key, explainer.negative_class)
        spread = stability[key].per_filter_landmark * diagonal
        result["filters"][MAPS[key]] = [
            {"filter": j, "category": _name(class_names, categories[j]),
             "part": landmark_names[measured.part[j]] if measured.part[j] >= 0 else "none",
             "hit": {n: _number(measured.hit[j, k]) for k, n in enumerate(landmark_names)},
             "fixed": {n: _number(measured.fixed[j, k]) for k, n in enumerate(landmark_names)},
             "offset": {n: _pair(measured.offset[j, k]) for k, n in enumerate(landmark_names)},
             "spread": {n: _number(spread[j, k]) for k, n in enumerate(landmark_names)},
             "instability": _number(stability[key].per_filter[j]),
             "twins": [int(t) for t in measured.twins[j]], "dead": bool(measured.dead[j])}
            for j in range(len(categories))]
    logging.info("Evaluated %d images: p %.3f, instability %.4f (explainer), part coverage %s.",
                 result["num_images"], result["p"], result.get("instability_explainer", np.nan),
                 result.get("part_coverage"))
    return result


def _name(names, index):
    return names[int(index)] if names else int(index)


def _number(value):
    """A JSON-friendly float (None for NaN)."""
    return None if np.isnan(value) else float(value)


def _pair(values):
    """A JSON-friendly [x, y] (None when unmeasured)."""
    return None if np.isnan(values).any() else [float(v) for v in values]


def performer_geometries(performer):
    """Receptive-field geometry of each measured map, derived from the performer's graph.

    The explainer's part maps sit on the target layer's grid (3x3 'same' convolutions, stride 1).
    """
    from tf_explainer.performers import receptive_field
    target = receptive_field(performer.model, performer.target_layer)
    geometries = {"target": target, "part_maps": target}
    if performer.top_conv_output_layer:
        geometries["top"] = receptive_field(performer.model, performer.top_conv_output_layer)
    return geometries


def top_contributions(explainer, batch, class_names, top=5):
    """Per image of `batch`: its label, the performer's prediction and the `top` filters that
    contribute most to that predicted class, with each filter's assigned category."""
    contributions = part_contributions(explainer, batch["image"])
    predicted = np.argmax(explainer.performer_features(batch["image"])["scores"], -1)
    categories = explainer.filter_categories()[1].numpy()
    images = []
    for i, row in enumerate(contributions):
        order = np.argsort(-row)[:top]
        images.append({"index": i, "label": class_names[int(batch["label"][i])],
                       "predicted": class_names[int(predicted[i])],
                       "filters": [{"filter": int(f), "category": class_names[int(categories[f])],
                                    "contribution": float(row[f])} for f in order]})
    return images


def summary_text(metrics: dict) -> str:
    """A human-readable summary of `evaluate` results (and a baseline's, when present)."""
    lines = []
    for name, values in metrics.items():
        if not isinstance(values, dict) or "p" not in values:
            continue
        lines.append(f"{name}:")
        lines.append(f"  p (interpretable share)       {values['p']:.3f}")
        lines.append(f"  performer error               {values['performer_error']:.4f}")
        lines.append(f"  reconstructed error           {values['reconstructed_error']:.4f}"
                     f"  (+{100 * values['reconstructed_error_increase']:.2f} points)")
        for key, label in (("instability_performer_target", "performer target layer"),
                           ("instability_performer_top", "performer top conv"),
                           ("instability_explainer", "explainer conv-interp-2")):
            if key in values:
                lines.append(f"  location instability          {values[key]:.4f}  {label}")
        if "instability_fixed_point" in values:
            lines.append(f"  location instability          {values['instability_fixed_point']:.4f}"
                         "  best fixed pixel (the floor a filter that never moves reaches)")
        for suffix, label in (("", "explainer conv-interp-2"), ("_top", "performer top conv")):
            if f"part_coverage{suffix}" in values:
                per_part = ", ".join(f"{part} {count}" for part, count
                                     in values[f"filters_per_part{suffix}"].items() if count)
                lines.append(f"  part coverage / duplicates    {values[f'part_coverage{suffix}']:.2f}"
                             f" / {values[f'duplicate_filters{suffix}']:.2f}  {label}"
                             f" (filters per part: {per_part})")
        record = values.get("training")
        if record:
            ratios = record["gradient_ratios"][-1] if record.get("gradient_ratios") else {}
            lines.append(f"  training                      {record['epochs_trained']} of "
                         f"{record['max_epochs']} epochs, {record['steps']} steps, converged: "
                         f"{'epoch ' + str(record['converged_epoch']) if record['converged_epoch'] else 'no'}"
                         f", lambda {record['filter_loss_weight']:.4g}")
            if ratios:
                lines.append("  gradient ratio to recon.      " + ", ".join(
                    f"{key.replace('grad_ratio_', '')} {value:.3g}" for key, value in ratios.items()))
    return "\n".join(lines) + "\n"
