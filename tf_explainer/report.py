"""An HTML report of one explainer that a person can read without TensorFlow (docs/method.md).

Numbers alone do not say whether a part filter is a part: the report puts each conv-interp-2
filter's strongest patches next to its distance statistics, and shows for a few probe images which
filters carried the prediction. It is self-contained (inline CSS, no scripts, no network); the
PNG images sit beside index.html and are linked by relative paths, so the folder can be copied.
"""

import html
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_explainer import evaluation, visualize

REPORT_FILE = "index.html"
TOP_CONTRIBUTORS = 5  # bars per probe image
OVERLAID_CONTRIBUTORS = 3  # filters drawn on each probe image
LANDMARK_COLUMNS = 3  # landmark/distance pairs per table row
# Small pictures are enlarged (nearest neighbour) to at least this many pixels a side.
IMAGE_SIDE = 160
PATCH_SIDE = 64

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1160px; }
h1 { margin-bottom: 4px; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 10px; text-align: left; font-size: 14px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; } .note { color: #666; font-size: 13px; max-width: 800px; }
.filter { display: flex; gap: 16px; align-items: flex-start; border-bottom: 1px solid #eee;
          padding: 10px 0; }
.filter h3 { margin: 0 0 6px 0; font-size: 16px; width: 170px; flex: none; }
.probe { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap;
         border-bottom: 1px solid #eee; padding: 12px 0; }
figure { margin: 0; } figcaption { font-size: 13px; color: #444; margin-top: 2px; }
.probe img { width: 144px; }
img { image-rendering: pixelated; border: 1px solid #ccc; }
.bars { width: 420px; flex: none; }
.bar-row { display: flex; align-items: center; gap: 6px; font-size: 13px; margin: 3px 0; }
.swatch { width: 12px; height: 12px; flex: none; } .bar-label { width: 170px; }
.bar-track { width: 140px; flex: none; height: 14px; background: #f0f0f0; }
.bar { height: 14px; } .bar.pos { background: #2a7ab0; } .bar.neg { background: #c0504d; }
.bar-value { width: 60px; text-align: right; font-variant-numeric: tabular-nums; }
"""


def write_report(explainer, performer, dataset, out_dir, class_names, landmark_names,
                 probe_images=4, per_filter=6, max_filters=None, patch_images=512):
    """Writes index.html and its PNGs into out_dir; returns the path of index.html.

    dataset: batches of {"image", "raw", "label", "landmarks"} (the test split), with the
    performer attached to the explainer. Filters are listed most stable first; max_filters
    keeps the first ones. Patches are mined from the first `patch_images` images.
    """
    os.makedirs(out_dir, exist_ok=True)
    collected = evaluation.collect(explainer, dataset)
    geometries = evaluation.performer_geometries(performer)
    raws, images, part_maps = _first_images(explainer, dataset, max(patch_images, probe_images))
    filter_categories = explainer.filter_categories()[1].numpy()
    names = [str(name) for name in class_names]
    stability = evaluation.instability(collected, "part_maps", geometries["part_maps"],
                                       explainer.negative_class)
    measured = {key: evaluation.parts(collected, key, geometries[key], explainer.negative_class)
                for key in evaluation.PART_MAPS if key in collected.cells and key in geometries}
    body = [
        _header(explainer, collected, names),
        _summary(collected, geometries, explainer.negative_class, measured),
        _filters(out_dir, raws, part_maps, geometries["part_maps"], stability, filter_categories,
                 names, landmark_names, collected.image_size, per_filter, max_filters,
                 measured["part_maps"]),
        _probes(out_dir, explainer, collected, raws[:probe_images], images[:probe_images],
                part_maps[:probe_images], filter_categories, names),
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Explainer report</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = os.path.join(out_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


# ---- data ------------------------------------------------------------------------------------
def _first_images(explainer, dataset, count):
    """Raw pixels, performer inputs and part maps of the first `count` images of the dataset."""

    @tf.function
    def part_maps(data):
        return explainer(explainer.features(data)["target"], training=False)["part_maps"]

    raws, images, maps, seen = [], [], [], 0
    for data in dataset:
        if seen >= count:
            break
        raws.append(data["raw"].numpy())
        images.append(data["image"].numpy())
        maps.append(part_maps(data).numpy())
        seen += raws[-1].shape[0]
    return tuple(np.concatenate(parts)[:count] for parts in (raws, images, maps))


# ---- sections --------------------------------------------------------------------------------
def _e(value):
    return html.escape(str(value))


def _number(value, digits=4):
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _header(explainer, collected, class_names):
    performer_accuracy = float(np.mean(collected.performer_predictions == collected.labels))
    reconstructed_accuracy = float(np.mean(collected.reconstructed_predictions == collected.labels))
    rows = [("p (share of the interpretable track)", _number(float(explainer.fusion.p()), 3)),
            ("performer accuracy", _number(performer_accuracy, 3)),
            ("reconstructed accuracy (head on the explainer's output)",
             _number(reconstructed_accuracy, 3)),
            ("test images", str(collected.labels.shape[0]))]
    return ("<h1>Explainer report</h1>"
            f"<p class=\"meta\">Categories: {_e(', '.join(class_names))}</p>"
            + _table(("", "value"), rows))


def _summary(collected, geometries, negative_class, measured):
    labels = {"target": "performer target layer", "top": "performer top conv",
              "part_maps": "explainer conv-interp-2"}
    rows = [(labels[key], _number(evaluation.instability(collected, key, geometries[key],
                                                         negative_class).mean),
             _number(measured[key].coverage, 2) if key in measured else "-",
             _number(measured[key].duplicates, 2) if key in measured else "-")
            for key in evaluation.MAPS if key in collected.cells and key in geometries]
    rows.append(("best fixed pixel (floor)",
                 _number(evaluation.fixed_point_floor(collected, negative_class)), "-", "-"))
    return ("<h2>Performer vs explainer</h2>"
            + _table(("map", "location instability", "part coverage", "duplicates"), rows)
            + "<p class=\"note\">Location instability: spread of the distance between a filter's "
              "peak and each landmark over its top images, divided by the image diagonal; lower "
              "means more part-like, but a pixel that never moves already scores the floor. Part "
              "coverage: fraction of landmarks that at least one filter detects (its peak within "
              "10% of the diagonal of the landmark on at least half its top images, and 0.2 more "
              "often than the best fixed pixel). Duplicates: fraction of filters that are dead or "
              "whose peak strengths correlate >= 0.9 with another filter's (docs/method.md).</p>")


def _filters(out_dir, raws, part_maps, geometry, stability, filter_categories, class_names,
             landmark_names, image_size, per_filter, max_filters, measured):
    order = np.argsort(np.where(np.isnan(stability.per_filter), np.inf, stability.per_filter),
                       kind="stable")[:max_filters]
    patch_size = visualize.default_patch_size(geometry, image_size)
    patches = visualize.top_patches(raws, part_maps, geometry, patch_size, per_filter=per_filter)
    diagonal = float(np.hypot(*image_size))
    sections = []
    for f in order:
        name = f"filter_{f:03d}.png"
        _save(visualize.patch_grid(patches[f:f + 1]), os.path.join(out_dir, name), PATCH_SIDE)
        pixels = [_number(spread * diagonal, 1) for spread in stability.per_filter_landmark[f]]
        part = landmark_names[measured.part[f]] if measured.part[f] >= 0 else "no part"
        twins = ("dead" if measured.dead[f] else
                 "twins: " + ", ".join(str(t) for t in measured.twins[f]) if measured.twins[f]
                 else "no twin")
        sections.append(
            f"<div class=\"filter\"><h3>Filter {f}<br>"
            f"<span class=\"meta\">{_e(class_names[filter_categories[f]])}<br>"
            f"part: {_e(part)}<br>{_e(twins)}<br>"
            f"instability {_number(stability.per_filter[f])}</span></h3>"
            f"<img src=\"{name}\" alt=\"top patches of filter {f}\">"
            + _landmark_table(landmark_names, pixels) + "</div>")
    return ("<h2>Part filters (conv-interp-2)</h2>"
            f"<p class=\"note\">{len(order)} of {len(filter_categories)} filters, most stable first. "
            f"Each row: the filter's assigned category, its {per_filter} strongest patches with the "
            "receptive field outlined, its location instability, and the spread (std) of its "
            "peak-to-landmark distance in pixels per landmark (\"-\" where too few images have "
            "that landmark).</p>" + "".join(sections))


def _probes(out_dir, explainer, collected, raws, images, part_maps, filter_categories,
            class_names):
    """The first images of the dataset (the first ones collected, too), as in the paper's Fig. 5."""
    contributions = evaluation.part_contributions(explainer, images)
    cams = visualize.explainer_grad_cam(explainer, images)
    blocks = []
    for i, raw in enumerate(raws):
        top = np.argsort(-contributions[i], kind="stable")[:TOP_CONTRIBUTORS]
        overlaid = visualize.strongest_first(part_maps[i].max(axis=(0, 1)),
                                             top[:OVERLAID_CONTRIBUTORS])  # colour order
        colours = dict(zip(overlaid, visualize.PALETTE.astype(int)))
        figures = [_figure(out_dir, f"image_{i}.png", raw, "image"),
                   _figure(out_dir, f"parts_{i}.png",
                           visualize.overlay_part_maps(_grey(raw), part_maps[i][..., overlaid],
                                                       top_k=len(overlaid)),
                           "top contributing filters")]
        for source, cam in cams.items():
            figures.append(_figure(out_dir, f"cam_{source}_{i}.png",
                                   visualize.heatmap_overlay(raw, cam[i]), f"Grad-CAM, {source}"))
        bars = _bars([(f"filter {f} ({class_names[filter_categories[f]]})", contributions[i][f],
                       colours.get(f)) for f in top])
        blocks.append(
            f"<div class=\"probe\">{figures[0]}{figures[1]}<div class=\"bars\"><b>Predicted: "
            f"{_e(class_names[collected.performer_predictions[i]])}</b> (label: "
            f"{_e(class_names[collected.labels[i]])})<p class=\"note\">Contribution of each filter "
            f"to this class score; a swatch gives its colour on the image.</p>{bars}</div>"
            + "".join(figures[2:]) + "</div>")
    return ("<h2>Part contributions</h2>"
            "<p class=\"note\">Gradient x activation of the predicted class score with respect to "
            "each interpretable filter, through the decoder and the performer's head. Grad-CAM "
            "compares where the explainer's part maps and the performer's top conv support the "
            "predicted class.</p>" + "".join(blocks))


# ---- HTML and image helpers ------------------------------------------------------------------
def _table(header, rows):
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr><td>" + _e(label) + "</td>"
                   + "".join(f"<td class=\"num\">{_e(v)}</td>" for v in values) + "</tr>"
                   for label, *values in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _landmark_table(names, values):
    """(landmark, value) pairs laid out LANDMARK_COLUMNS to a row, so many landmarks stay short."""
    pairs = [f"<td>{_e(name)}</td><td class=\"num\">{_e(value)}</td>"
             for name, value in zip(names, values)]
    columns = min(LANDMARK_COLUMNS, len(pairs))
    head = "<th>landmark</th><th>px</th>" * columns
    rows = "".join("<tr>" + "".join(pairs[i:i + columns]) + "</tr>"
                   for i in range(0, len(pairs), columns))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _bars(items):
    """A horizontal bar per (label, value, swatch RGB or None), scaled to the largest magnitude."""
    scale = max((abs(float(v)) for _, v, _ in items), default=0.0) or 1.0
    rows = []
    for label, value, swatch in items:
        value = float(value)
        colour = "transparent" if swatch is None else "rgb({}, {}, {})".format(*swatch)
        rows.append(
            f"<div class=\"bar-row\"><span class=\"swatch\" style=\"background:{colour}\"></span>"
            f"<span class=\"bar-label\">{_e(label)}</span>"
            f"<div class=\"bar-track\"><div class=\"bar {'pos' if value >= 0 else 'neg'}\" "
            f"style=\"width:{100 * abs(value) / scale:.1f}%\"></div></div>"
            f"<span class=\"bar-value\">{value:.3g}</span></div>")
    return "".join(rows)


def _figure(out_dir, name, image, caption):
    _save(image, os.path.join(out_dir, name))
    return (f"<figure><img src=\"{name}\" alt=\"{_e(caption)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _grey(raw):
    """The image in grey, so overlaid filter colours cannot be mistaken for the image's own."""
    grey = np.asarray(raw, np.float32).mean(axis=-1, keepdims=True)
    return np.repeat(grey, 3, axis=-1).astype(np.uint8)


def _save(image, path, min_side=IMAGE_SIDE):
    """Writes a uint8 image as PNG, enlarged by an integer factor when it is small."""
    image = np.asarray(image, dtype=np.uint8)
    factor = max(1, -(-min_side // min(image.shape[:2])))
    pil = Image.fromarray(image)
    if factor > 1:
        pil = pil.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
    pil.save(path)
