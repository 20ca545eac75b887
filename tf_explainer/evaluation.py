"""The paper's measurements of an explainer against its performer (SPEC 5).

Streams a dataset once through the performer and the explainer, keeping only each filter's peak
(cell and value) per image, so memory grows with images x filters, not with map sizes.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from tf_explainer.metrics import instability as inst
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


def collect(explainer, dataset, steps=None) -> Collected:
    """Runs batches of {"image", "label", "landmarks"} through performer and explainer."""

    @tf.function
    def step(data):
        features = explainer.features(data)
        outputs = explainer(features["target"], training=False)
        maps = {"target": features["target"], "part_maps": outputs["part_maps"]}
        if "top" in features:
            maps["top"] = features["top"]
        peaks = {}
        for key, value in maps.items():
            flat = tf.reshape(value, [tf.shape(value)[0], -1, value.shape[-1]])
            index = tf.argmax(flat, axis=1, output_type=tf.int32)
            peaks[key] = (tf.stack([index // value.shape[2], index % value.shape[2]], -1),
                          tf.reduce_max(flat, axis=1))
        return (peaks, tf.argmax(features["scores"], -1, output_type=tf.int32),
                tf.argmax(outputs["scores"], -1, output_type=tf.int32))

    parts = {"cells": {}, "values": {}, "landmarks": [], "labels": [], "perf": [], "recon": []}
    image_size = None
    if steps is not None:
        dataset = dataset.take(steps)
    for data in logged(dataset, "Evaluation", cardinality(dataset)):
        image_size = tuple(int(d) for d in data["image"].shape[1:3])
        peaks, performer_pred, recon_pred = step(data)
        for key, (cells, values) in peaks.items():
            parts["cells"].setdefault(key, []).append(cells.numpy())
            parts["values"].setdefault(key, []).append(values.numpy())
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


def instability(collected: Collected, key, geometry, negative_class=None, top_k=100):
    """Location instability of one collected map (SPEC 5, official protocol).

    Single-category (one class besides the negative one): all filters on that class's images.
    Multi-category: each filter on the images of the category where its mean peak is highest.
    """
    xy = inst.project_cells(collected.cells[key], geometry.stride, geometry.offset)
    values = collected.values[key]
    labels = collected.labels
    classes = [c for c in np.unique(labels) if c != negative_class]
    if len(classes) == 1:
        keep = labels == classes[0]
        return inst.location_instability(xy[keep], values[keep], collected.landmarks[keep],
                                         collected.image_size, top_k=top_k).mean
    ignore = () if negative_class is None else (negative_class,)
    num_classes = int(labels.max()) + 1
    categories = inst.assign_filters_to_categories(values, labels, num_classes, ignore_labels=ignore)
    return inst.location_instability_by_category(
        xy, values, collected.landmarks, labels, collected.image_size, categories, top_k=top_k).mean


def evaluate(explainer, dataset, geometries, steps=None, top_k=100) -> dict:
    """p, performer and reconstructed accuracy, and location instability of each measured map.

    geometries: {"target": ReceptiveField, "top": ..., "part_maps": ...} (stride, offset in
    input pixels); maps without a geometry or without collected peaks are left out.
    """
    collected = collect(explainer, dataset, steps)
    performer_accuracy = float(np.mean(collected.performer_predictions == collected.labels))
    reconstructed_accuracy = float(np.mean(collected.reconstructed_predictions == collected.labels))
    result = {
        "num_images": int(collected.labels.shape[0]),
        "p": float(explainer.fusion.p()),
        "performer_accuracy": performer_accuracy,
        "reconstructed_accuracy": reconstructed_accuracy,
        "reconstructed_error_increase": performer_accuracy - reconstructed_accuracy,
    }
    for key, name in MAPS.items():
        if key in collected.cells and key in geometries:
            result[f"instability_{name}"] = float(instability(
                collected, key, geometries[key], explainer.negative_class, top_k))
    logging.info("Evaluation: %s", result)
    return result


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
