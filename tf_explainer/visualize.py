"""Pictures of what the explainer's part filters see: part maps, top patches, Grad-CAM.

Everything here takes and returns numpy arrays and writes nothing, so the same pictures can go to
TensorBoard (tf_explainer.tensorboard), an HTML report, or a notebook.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from tf_explainer.metrics.instability import map_peaks
from tf_explainer.performers.spec import tensor_source

# Distinct overlay colours (RGB), cycled when more filters are shown than there are colours.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.float32)
_BOX_COLOUR = np.array([255, 255, 0], np.uint8)
_OVERLAY_ALPHA = 0.6
_HEATMAP_ALPHA = 0.5


def _upsample(maps, size):
    """Bilinear resize of [h, w, C] maps to size (H, W), as float32 numpy."""
    return tf.image.resize(np.asarray(maps, np.float32), size, method="bilinear").numpy()


def _blend(raw, colour, alpha):
    """raw * (1 - alpha) + colour * alpha, per pixel; alpha [H, W] in [0, 1]."""
    alpha = alpha[..., None]
    return np.clip(np.rint(raw * (1 - alpha) + colour * alpha), 0, 255).astype(np.uint8)


def strongest_first(peaks, filters=None, top_k=None):
    """Filter indices (all, or `filters` in their given order for ties) sorted by their peak,
    strongest first: the order in which overlay_part_maps shows and colours filters
    (PALETTE[i] for the i-th), so callers can name each filter's colour."""
    peaks = np.maximum(np.asarray(peaks, np.float32), 0.0)
    filters = np.arange(len(peaks)) if filters is None else np.asarray(filters, np.int64)
    return filters[np.argsort(-peaks[filters], kind="stable")][:top_k]


def overlay_part_maps(raw, part_maps, top_k=3):
    """The top_k filters with the strongest peak, each in its own colour, over one image.

    raw: uint8 [H, W, 3]; part_maps: [h, w, F] of that image. Each map is scaled by its own peak so
    weak and strong filters are equally visible; pixels where no shown filter fires are unchanged.
    """
    raw = np.asarray(raw)
    part_maps = np.maximum(np.asarray(part_maps, np.float32), 0.0)
    peaks = part_maps.max(axis=(0, 1))
    shown = strongest_first(peaks, top_k=top_k)
    maps = _upsample(part_maps[..., shown], raw.shape[:2])
    maps = np.clip(np.divide(maps, peaks[shown], out=np.zeros_like(maps), where=peaks[shown] > 0),
                   0.0, 1.0)  # [H, W, k]
    colours = PALETTE[np.arange(len(shown)) % len(PALETTE)]  # [k, 3]
    weight = maps.sum(axis=-1, keepdims=True)
    colour = np.divide(maps @ colours, weight, out=np.zeros(raw.shape, np.float32),
                       where=weight > 0)  # each pixel: the shown filters' colours, by strength
    return _blend(raw.astype(np.float32), colour, _OVERLAY_ALPHA * maps.max(axis=-1))


def _draw_centre_box(patches, side):
    """Outlines a side x side box around the centre pixel of every patch [..., P, P, 3], in place.

    The box marks one cell's footprint (one stride) and leaves the centre pixel itself visible.
    """
    size = patches.shape[-2]
    centre = size // 2
    low, high = max(centre - side // 2, 0), min(centre - side // 2 + side - 1, size - 1)
    for edge in (low, high):
        patches[..., edge, low:high + 1, :] = _BOX_COLOUR
        patches[..., low:high + 1, edge, :] = _BOX_COLOUR
    return patches


def top_patches(raws, part_maps, geometry, patch_size, per_filter=8):
    """For each filter, patches around its peak in the per_filter images where it peaks highest.

    raws: uint8 [N, H, W, 3]; part_maps: [N, h, w, F]; geometry: a ReceptiveField (cell i's centre
    is at pixel offset + i * stride). Returns uint8 [F, k, P, P, 3], k = min(per_filter, N),
    sorted by peak value; each patch is centred on the peak cell's centre (clamped to the image),
    zero outside the image, with a one-stride box drawn around the centre.
    """
    raws = np.asarray(raws)
    cells, values = map_peaks(np.asarray(part_maps, np.float32))  # [N, F, 2], [N, F]
    n, height, width = raws.shape[:3]
    filters = values.shape[1]
    chosen = np.argsort(-values, axis=0, kind="stable")[:min(per_filter, n)].T  # [F, k]
    centres = np.floor(geometry.cell_to_pixel(cells) + 0.5).astype(np.int64)  # [N, F, (row, col)]
    centres = np.clip(centres, 0, np.array([height - 1, width - 1]))
    centres = centres[chosen, np.arange(filters)[:, None]]  # [F, k, 2]
    pad = patch_size
    padded = np.pad(raws, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    steps = np.arange(patch_size) - patch_size // 2 + pad
    rows = centres[..., 0, None] + steps  # [F, k, P]
    cols = centres[..., 1, None] + steps
    patches = padded[chosen[..., None, None], rows[..., :, None], cols[..., None, :]]
    return _draw_centre_box(patches, max(3, int(round(geometry.stride))))


def patch_grid(patches):
    """Tiles patches [F, k, P, P, 3] into one image [F * P, k * P, 3], one row per filter."""
    patches = np.asarray(patches)
    filters, k, size = patches.shape[:3]
    return patches.transpose(0, 2, 1, 3, 4).reshape(filters * size, k * size, patches.shape[-1])


def grad_cam(model_fn, inputs, class_index=None):
    """Grad-CAM: where the feature map supports the class score, normalised to [0, 1] per image.

    model_fn(inputs) -> (feature_map [B, h, w, C], class_scores [B, K]) with the scores computed
    from that very map tensor; the tape watches `inputs`, so everything on the way is recorded.
    class_index: int or [B] ints; None takes each image's highest score.
    Returns float32 [B, h, w]: relu(sum_c w_c map_c), w_c the spatial mean of d score / d map_c.
    """
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        feature_map, scores = model_fn(inputs)
        if class_index is None:
            class_index = tf.argmax(scores, axis=-1)
        index = tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(scores)[:1])
        score = tf.gather(scores, index, batch_dims=1)
    gradients = tape.gradient(score, feature_map)
    if gradients is None:
        raise ValueError("The class scores do not depend on the returned feature map.")
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), axis=-1))
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
    return cam.numpy().astype(np.float32)


def _explainer_part_maps_and_scores(explainer, x0):
    """(part maps, class scores), the scores computed from that very part-map tensor."""
    stage = explainer.part_stage(x0, training=False)
    scores = explainer.from_part_maps(stage["part_maps"], stage["ordin"], training=False)["scores"]
    return stage["part_maps"], scores


@functools.lru_cache(maxsize=4)
def _performer_from_top(taps):
    """The performer's layers from its top conv map to its scores, cut out of its own graph.

    The taps model's "top" and "scores" outputs are traced back through the tap models to the
    performer's tensors, so the cut model shares the performer's layers and weights.
    """
    top, scores = (tensor_source(taps, taps.output[key]).tensor for key in ("top", "scores"))
    return keras.Model(top, scores, name="performer_from_top")


def explainer_grad_cam(explainer, images, class_index=None):
    """Grad-CAM of the explainer's part maps and of the performer's top conv map.

    "explainer": conv-interp-2 w.r.t. the class score the performer's head gives the explainer's
    reconstruction; "performer": the top conv map w.r.t. the performer's own score (left out when
    the performer names no top conv layer). class_index None: the performer's predicted class.
    Each is float32 [B, h, w] in [0, 1].
    """
    taps = explainer.performer_taps
    if taps is None:
        raise ValueError("explainer_grad_cam needs a performer: call explainer.attach_performer.")
    features = taps(tf.convert_to_tensor(images), training=False)
    if class_index is None:
        class_index = tf.argmax(features["scores"], axis=-1)
    cams = {"explainer": grad_cam(lambda x0: _explainer_part_maps_and_scores(explainer, x0),
                                  features["target"], class_index)}
    if "top" in features:
        from_top = _performer_from_top(taps)
        cams["performer"] = grad_cam(lambda top: (top, from_top(top, training=False)),
                                     features["top"], class_index)
    return cams


def _jet(values):
    """The jet colour map: values [...] in [0, 1] -> float RGB [..., 3] in [0, 255]."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    return 255.0 * np.clip(1.5 - np.abs(4.0 * values - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heatmap_overlay(raw, cam):
    """A [h, w] map in [0, 1] (e.g. a Grad-CAM) upsampled and colour-mapped over raw [H, W, 3]."""
    raw = np.asarray(raw)
    cam = _upsample(np.asarray(cam)[..., None], raw.shape[:2])[..., 0]
    return _blend(raw.astype(np.float32), _jet(cam), np.full(cam.shape, _HEATMAP_ALPHA, np.float32))


def default_patch_size(geometry, image_size):
    """Four strides of the part-map grid: the part and a little context, within the image."""
    return min(int(round(4 * geometry.stride)), *image_size)


def image_summaries(explainer, batch, geometry, patch_size=None, top_k=3, per_filter=6,
                    max_filters=16):
    """The explainer's pictures for one batch {"image", "raw", "label"}, as uint8 [N, H, W, 3].

    "part_overlay": each image with its top_k strongest part maps; "top_patches": one grid, a row
    per filter (the first max_filters) of its per_filter best patches (side patch_size, default
    four strides of the part maps' `geometry`); "grad_cam": per image, the explainer's Grad-CAM
    beside the performer's.
    """
    raws = np.asarray(batch["raw"])
    features = explainer.features({"image": batch["image"], "label": batch["label"]})
    part_maps = explainer(features["target"], training=False)["part_maps"].numpy()
    if patch_size is None:
        patch_size = default_patch_size(geometry, raws.shape[1:3])
    cams = explainer_grad_cam(explainer, batch["image"])
    overlays = [[heatmap_overlay(raw, cam[i]) for cam in cams.values()]
                for i, raw in enumerate(raws)]
    patches = top_patches(raws, part_maps[..., :max_filters], geometry, patch_size, per_filter)
    return {
        "part_overlay": np.stack([overlay_part_maps(r, m, top_k) for r, m in zip(raws, part_maps)]),
        "top_patches": patch_grid(patches)[None],
        "grad_cam": np.stack([np.concatenate(row, axis=1) for row in overlays]),
    }
